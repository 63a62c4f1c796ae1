"""Testing oversipd modules against a real daemon (a pytest plugin).

Module code under test calls `record("event", key=value)`; the test
starts a real daemon with `oversipd_daemon(...)` and waits for those
events, for log lines, sd_notify messages or the daemon's exit.  Events
travel over a unix datagram socket the test owns, so a test waits for an
event, never for a guessed number of seconds.  docs/modules.md ("Testing")
is the guide; every wait takes a `timeout` (default `DEFAULT_TIMEOUT`,
`$OVERSIPD_TEST_TIMEOUT` seconds when set).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

EVENTS_ENV = "OVERSIPD_TEST_EVENTS"
TIMEOUT_ENV = "OVERSIPD_TEST_TIMEOUT"
DEFAULT_TIMEOUT = float(os.environ.get(TIMEOUT_ENV) or 15.0)
LOG_DRAIN_TIMEOUT = 5.0  # seconds wait_exit waits for the last log lines
WAIT_WORKERS_POLL = 0.05  # seconds between looks at the process table
_sender: socket.socket | None = None


def record(event: str, **fields: Any) -> None:
    """Called by module code: report `event` to the test that started the daemon."""
    global _sender
    address = os.environ.get(EVENTS_ENV)
    if not address:
        return
    import oversipd
    payload = {"event": event, "pid": os.getpid(), "role": oversipd.process.role,
               "worker": oversipd.process.worker_id, "t": time.monotonic_ns(), **fields}
    if _sender is None or _sender.family != socket.AF_UNIX:
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    _sender.sendto(json.dumps(payload).encode(), address)


class _Inbox:
    """Items arriving from a thread, and a way to wait until enough of them match."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.changed = threading.Condition()

    def add(self, item: Any) -> None:
        with self.changed:
            self.items.append(item)
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                result = predicate(self.items)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
                self.changed.wait(remaining)


def bind_datagram_inbox(address: str, inbox: _Inbox,
                        decode: Callable[[bytes], Any] = bytes.decode) -> socket.socket:
    """Bind a unix datagram socket (`@name`: abstract) whose messages a thread decodes into `inbox`.

    Closing the returned socket ends the thread.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    threading.Thread(target=_receive_into, args=(sock, inbox, decode), daemon=True).start()
    return sock


def _receive_into(sock: socket.socket, inbox: _Inbox, decode: Callable[[bytes], Any]) -> None:
    while True:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            return
        if not data:
            return
        inbox.add(decode(data))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_document(tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class Mark:
    """How many events, log lines and notifications had arrived when `Daemon.mark()` was called."""

    events: int = 0
    log: int = 0
    notifications: int = 0


@dataclass
class Daemon:
    """A real oversipd in `directory`, with its modules, settings, log and events."""

    directory: Path
    modules: dict[str, str] = field(default_factory=dict)
    core: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    server_script: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    workers: int | None = None   # shorthand for core={"workers": N}

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.conf_path = self.directory / "oversipd.conf"
        self.modules_dir = self.directory / "modules.d"
        self.log_path = self.directory / "oversipd.log"
        self.events = _Inbox()
        self.log = _Inbox()
        self.notifications = _Inbox()
        # AF_UNIX paths are limited to 108 bytes: keep the sockets short-named.
        self._sockets_dir = Path(tempfile.mkdtemp(prefix="ovs-"))
        self._events_sock = bind_datagram_inbox(str(self._sockets_dir / "events"), self.events, json.loads)
        self._notify_sock = bind_datagram_inbox(str(self._sockets_dir / "notify"), self.notifications,
                                                lambda data: data.decode().split("\n"))
        self.write_files()

    # --- files -------------------------------------------------------------

    def write_files(self) -> None:
        """(Re)write the configuration and the module files."""
        self.modules_dir.mkdir(mode=0o755, exist_ok=True)
        for name, source in self.modules.items():
            path = self.modules_dir / f"{name}.py"
            path.write_text(source)
            path.chmod(0o644)
        if self.server_script is not None:
            (self.directory / "server.py").write_text(self.server_script)
        self.write_conf()

    def write_conf(self, text: str | None = None) -> None:
        core = {"workers": 1, "log_level": "debug", **self.core}
        if self.workers is not None:
            core["workers"] = self.workers
        tables = {"core": core, **{f"modules.{k}": v for k, v in self.settings.items()},
                  **self.extra_tables}
        self.conf_path.write_text(text if text is not None else toml_document(tables))

    # --- running ---------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "oversipd", *args]

    def environment(self) -> dict[str, str]:
        env = {**os.environ, EVENTS_ENV: str(self._sockets_dir / "events"),
               "NOTIFY_SOCKET": str(self._sockets_dir / "notify"), **self.env}
        env.pop("JOURNAL_STREAM", None)
        return env

    def start(self, *args: str, wait: bool = True, timeout: float = DEFAULT_TIMEOUT) -> "Daemon":
        """Start `oversipd run -c CONF ARGS`; with `wait`, return once it is ready."""
        self.process = subprocess.Popen(
            self.command("run", "-c", str(self.conf_path), *args), env=self.environment(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        self._log_reader = threading.Thread(target=self._read_log, args=(self.process,), daemon=True)
        self._log_reader.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def run_command(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run another `oversipd` command (check, stop, status...) to completion."""
        return subprocess.run(self.command(*args), env=self.environment(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send `signum` to the master."""
        os.kill(self.pid, signum)

    def reload(self, wait: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        """SIGHUP; with `wait`, return once every worker ran its on_reload callbacks."""
        before = self.mark()
        self.signal(signal.SIGHUP)
        if wait:
            self.wait_notification("RELOADING=1", timeout, since=before)
            self.wait_notification("READY=1", timeout, since=before)

    def user_reload(self) -> None:
        """SIGUSR1: every worker runs SystemEvents.on_user_reload."""
        self.signal(signal.SIGUSR1)

    def add_worker(self) -> None:
        """SIGTTIN: one worker more (see wait_workers)."""
        self.signal(signal.SIGTTIN)

    def remove_worker(self) -> None:
        """SIGTTOU: one worker fewer (see wait_workers)."""
        self.signal(signal.SIGTTOU)

    def kill_worker(self, slot: int, signum: int | None = None) -> int:
        """Send `signum` (default SIGKILL) to the worker in `slot`; return its pid."""
        pid = self.worker_pids()[slot]
        os.kill(pid, signal.SIGKILL if signum is None else signum)
        return pid

    def worker_count(self) -> int:
        return len(self.worker_pids())

    def wait_workers(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> dict[int, int]:
        """Wait until exactly `count` workers run; return {slot: pid}."""
        deadline = time.monotonic() + timeout
        while True:
            self._fail_if_exited(f"{count} worker(s)")
            pids = self.worker_pids()
            if len(pids) == count:
                return pids
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {count} worker(s); "
                                   f"running: {sorted(pids)}")
            time.sleep(WAIT_WORKERS_POLL)  # the process table has no change event to wait on

    def set_settings(self, module: str, table: dict[str, Any]) -> None:
        """Replace the `[modules.MODULE]` table and rewrite the file (then `reload()` applies it)."""
        self.settings[module] = table
        self.write_conf()

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the master's exit status, then for the rest of its log to be read."""
        assert self.process is not None
        status = self.process.wait(timeout)
        # The last lines may still be in the pipe; it ends once every
        # process that shares the master's stderr is gone.
        self._log_reader.join(LOG_DRAIN_TIMEOUT)
        return status

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """SIGTERM the master and wait for it; returns its exit status."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Leave nothing running: kill what the test did not stop."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
        for sock in (self._events_sock, self._notify_sock):
            sock.close()

    def worker_pids(self) -> dict[int, int]:
        """{worker slot: pid} of the live workers, read from their process titles."""
        from .process import worker_processes
        return {slot: child.pid for slot, child in worker_processes(self.pid).items()}

    # --- waiting ---------------------------------------------------------------

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the master's READY=1 (sd_notify), or fail if it exits first."""
        self.wait_notification("READY=1", timeout)

    def wait_notification(self, line: str, timeout: float = DEFAULT_TIMEOUT, count: int = 1, *,
                          since: Mark | None = None) -> None:
        """Wait for `count` sd_notify messages with the line `line` (e.g. "READY=1")."""
        def seen(items: list[list[str]]) -> bool:
            self._fail_if_exited(f"the notification {line!r}")
            return sum(line in message for message in items[since.notifications if since else 0:]) >= count
        self.notifications.wait_for(seen, timeout, f"{count} x {line!r} from sd_notify")

    def wait_events(self, event: str, count: int = 1, timeout: float = DEFAULT_TIMEOUT, *,
                    since: Mark | None = None, **match: Any) -> list[dict[str, Any]]:
        """Wait until `count` events named `event` (with matching fields) arrived; return them all."""
        def matching(items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            found = self.find(event, since=since, **match)
            return found if len(found) >= count else None
        return self.events.wait_for(matching, timeout, f"{count} x event {event!r} {match or ''}")

    def find(self, event: str | None = None, *, since: Mark | None = None,
             **match: Any) -> list[dict[str, Any]]:
        """The recorded events named `event` whose fields equal `match` (after `since`, if given)."""
        with self.events.changed:
            items = self.events.items[since.events if since else 0:]
        return [e for e in items if (event is None or e["event"] == event)
                and all(e.get(k) == v for k, v in match.items())]

    def wait_log(self, text: str, timeout: float = DEFAULT_TIMEOUT, count: int = 1, *,
                 since: Mark | None = None) -> list[str]:
        """Wait until `count` log lines contain `text` (after `since`, if given); return them."""
        def matching(lines: list[str]) -> list[str] | None:
            found = [line for line in lines[since.log if since else 0:] if text in line]
            return found if len(found) >= count else None
        return self.log.wait_for(matching, timeout, f"{count} log line(s) with {text!r}")

    def log_lines(self, text: str = "", *, since: Mark | None = None) -> list[str]:
        """The log lines so far that contain `text`."""
        with self.log.changed:
            lines = self.log.items[since.log if since else 0:]
        return [line for line in lines if text in line]

    def mark(self) -> Mark:
        """A point in time: pass it as `since=` to wait only for what comes after it."""
        with self.events.changed, self.log.changed, self.notifications.changed:
            return Mark(len(self.events.items), len(self.log.items), len(self.notifications.items))

    def log_text(self) -> str:
        with self.log.changed:
            return "\n".join(self.log.items)

    def _fail_if_exited(self, waiting_for: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"oversipd exited with status {self.process.returncode} while "
                                 f"waiting for {waiting_for}; log:\n{self.log_text()}")

    # --- plumbing ----------------------------------------------------------------

    def _read_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        with open(self.log_path, "ab") as copy:
            for raw in process.stderr:
                copy.write(raw)
                copy.flush()
                self.log.add(raw.decode(errors="replace").rstrip("\n"))
        with self.log.changed:  # wake waiters: the daemon is gone
            self.log.changed.notify_all()
        with self.notifications.changed:
            self.notifications.changed.notify_all()


def _daemon_factory(directory: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(start: bool = True, args: tuple[str, ...] = (), **options: Any) -> Daemon:
        """A Daemon in a fresh directory; options are Daemon's fields (modules, core, settings...)."""
        path = directory / f"daemon{len(made) + 1}"
        path.mkdir(mode=0o755)
        daemon = Daemon(path, **options)
        made.append(daemon)
        if start:
            daemon.start(*args)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.cleanup()


try:
    import pytest
except ImportError:  # the plugin is optional; record() works without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def oversipd_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
        """Factory: `oversipd_daemon(modules={...}, settings={...}, workers=N)` -> a ready Daemon.

        Every daemon it made is killed (if still running) when the test ends.
        """
        tmp_path.chmod(0o755)
        yield from _daemon_factory(tmp_path)
