"""A private MariaDB server for tests and benchmarks: a temporary datadir, a unix socket, no TCP.

Debian's mariadb-server (`make test` installs it) provides mariadb-install-db
and mariadbd; Debian's own service is never started.  The server runs as the
`mysql` user when the caller is root.  It is started with
--innodb-use-native-aio=0 (with io_uring, MariaDB 10.11 hangs at start in
these VMs) and counted as up once its error log says "ready for
connections": its socket accepts before the server serves.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

START_TIMEOUT = 120.0   # seconds for install-db, and for the server to be ready or gone
POLL_INTERVAL = 0.05    # the error log is a file: no event to wait on
READY = "ready for connections"
DATABASE = "oversipd_test"
ACCOUNTS = 1000         # rows of the `accounts` table


def server_program(name: str) -> str:
    for directory in ("/usr/sbin", "/usr/bin"):
        if os.access(f"{directory}/{name}", os.X_OK):
            return f"{directory}/{name}"
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: `make test` installs Debian's mariadb-server package")
    return found


class MariadbServer:
    """mariadb-install-db into `base`/data, then mariadbd on `base`/mysqld.sock."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="ovs-maria-"))
        self.data = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.error_log = self.base / "error.log"
        self.user = "mysql" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.process: subprocess.Popen[bytes] | None = None

    # --- lifecycle ---------------------------------------------------------------

    def install(self) -> None:
        if os.geteuid() == 0:
            owner = pwd.getpwnam(self.user)
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        result = subprocess.run(
            [server_program("mariadb-install-db"), f"--user={self.user}", f"--datadir={self.data}",
             "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=START_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start mariadbd; return once its error log says it is ready for connections."""
        offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        self.process = subprocess.Popen(
            [server_program("mariadbd"), "--no-defaults", f"--user={self.user}", f"--datadir={self.data}",
             f"--socket={self.socket}", f"--pid-file={self.base / 'mysqld.pid'}",
             f"--log-error={self.error_log}", "--skip-networking", "--innodb-use-native-aio=0",
             "--performance-schema=ON", "--max-connections=200", "--innodb-buffer-pool-size=32M",
             "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self._wait_log(READY, offset)

    def stop(self) -> None:
        """SIGTERM, and wait for the process to end (it closes every client connection)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _wait_log(self, text: str, offset: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            log = self.error_log.read_text(errors="replace")[offset:] if self.error_log.exists() else ""
            if text in log:
                return
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited ({self.process.returncode}) before {text!r}:\n{log}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"mariadbd not {text!r} after {START_TIMEOUT:g} s:\n{log}")
            time.sleep(POLL_INTERVAL)

    # --- talking to it ---------------------------------------------------------------

    def connect_options(self) -> dict[str, Any]:
        """The options add_pool() takes for this server."""
        return {"unix_socket": str(self.socket), "user": "root", "db": DATABASE}

    def query(self, sql: str, database: str | None = DATABASE) -> list[list[str]]:
        """Rows of `sql` run by the mariadb command-line client, as lists of strings."""
        command = ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root",
                   "--batch", "--skip-column-names", "-e", sql]
        if database:
            command.append(database)
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb -e {sql!r} failed: {result.stderr.strip()}")
        return [line.split("\t") for line in result.stdout.splitlines()]

    def create_test_database(self) -> None:
        """Database oversipd_test with `accounts(id PRIMARY KEY, name)`, ids 1..ACCOUNTS."""
        values = ",".join(f"({n},'user{n}')" for n in range(1, ACCOUNTS + 1))
        self.query(f"CREATE DATABASE {DATABASE}", database=None)
        self.query("CREATE TABLE accounts (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL); "
                   f"INSERT INTO accounts VALUES {values}")


def started_server() -> MariadbServer:
    """A new private server, installed, running, with the test database; remove() it after."""
    server = MariadbServer()
    try:
        server.install()
        server.start()
        server.create_test_database()
    except BaseException:
        server.remove()
        raise
    return server
