"""oversip-mod-postgresql against a real PostgreSQL server started for this test session.

The server comes from Debian's postgresql package (`make test` installs it):
initdb into a temporary directory, listening on a unix socket only, run as
the `postgres` user when the tests run as root (initdb refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from db_helpers import (fatal_start_line, pool_daemon_options, pool_errors_script, pool_lookup_outcomes,
                        respawn_while_the_store_is_down, run_in_each_worker, sip_store_script, wait_until)
from sip_helpers import sip_daemon
from oversipd.testing import DEFAULT_TIMEOUT, Daemon

PG_PORT = 23432          # only names the socket file: the server listens on no TCP port
PG_SUPERUSER = "postgres"
PG_START_TIMEOUT = 120   # seconds pg_ctl waits for the server to start or stop


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail("PostgreSQL server programs not found: `make test` installs Debian's postgresql package")
    return Path(initdb).parent


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, on a unix socket."""

    def __init__(self, base: Path) -> None:
        self.bindir = postgres_bindir()
        self.base = base
        self.data = base / "data"
        self.socket_dir = base / "socket"
        self.logfile = base / "postgres.log"
        self.owner = pwd.getpwnam(PG_SUPERUSER) if os.geteuid() == 0 else None

    def run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self.owner is not None:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", self.owner.pw_name, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=PG_START_TIMEOUT + 30, cwd=self.base)
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}{log}")

    def initdb(self) -> None:
        self.socket_dir.mkdir()
        if self.owner is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self.run("initdb", "-D", str(self.data), "-U", PG_SUPERUSER, "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\nport = {PG_PORT}\n"
                       f"unix_socket_directories = '{self.socket_dir}'\n"
                       "fsync = off\nmax_connections = 60\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w",
                 "-t", str(PG_START_TIMEOUT), "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(PG_START_TIMEOUT), "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def conninfo(self) -> dict[str, Any]:
        return {"host": str(self.socket_dir), "port": PG_PORT, "user": PG_SUPERUSER, "dbname": "postgres"}

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(**self.conninfo(), autocommit=True) as connection:
            return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    # Not under pytest's tmp_path: its parents are 0700 root, and the
    # server runs as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="ovs-pg-"))
    server = PostgresServer(base)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        if server.is_running():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- the daemon's files ---------------------------------------------------------

# Queries the pool from every worker, over and over, and records each outcome.
QUERY_LOOP = """
import asyncio

import psycopg
from oversipd import Logger, SystemCallbacks
from oversipd.modules import postgresql
from oversipd.testing import record

log = Logger("pgclient")
running = {}


async def query_forever():
    n = 0
    while True:
        n += 1
        try:
            async with postgresql.pool("db").connection(timeout=2) as connection:
                cursor = await connection.execute("SELECT pg_backend_pid()")
                (backend,) = await cursor.fetchone()
            record("pg_query", ok=True, n=n, backend=backend)
        except psycopg.Error as error:
            log.log_system_error(f"query {n} failed: {error}")
            record("pg_query", ok=False, n=n, error=str(error))
        await asyncio.sleep(0.2)
""" + run_in_each_worker("query_forever")

# A slow query and a ticker on the same reactor.
SLOW_QUERY = """
import asyncio

from oversipd import SystemCallbacks
from oversipd.modules import postgresql
from oversipd.testing import record


async def tick():
    while True:
        record("tick")
        await asyncio.sleep(0.05)


@SystemCallbacks.on_started
async def slow_query():
    ticker = asyncio.get_running_loop().create_task(tick())
    record("sleep_start")
    async with postgresql.pool("db").connection() as connection:
        await connection.execute("SELECT pg_sleep(1)")
    record("sleep_done")
    ticker.cancel()
"""

# What pool() says for a name never declared, and in the master.
POOL_ERRORS = pool_errors_script("postgresql", "pgtest")


def daemon_options(postgres: PostgresServer, **pool_options: Any) -> dict[str, Any]:
    return pool_daemon_options("postgresql", "pgtest", postgres.conninfo(), **pool_options)


def worker_connections(postgres: PostgresServer) -> dict[str, int]:
    rows = postgres.query("SELECT application_name, count(*) FROM pg_stat_activity "
                          "WHERE application_name LIKE 'oversipd worker %' GROUP BY 1")
    return dict(rows)


# --- tests -------------------------------------------------------------------------

def test_each_worker_opens_its_own_pool_and_closes_it(postgres: PostgresServer, oversipd_daemon) -> None:
    daemon: Daemon = oversipd_daemon(modules={"pgclient": QUERY_LOOP}, workers=2,
                                     **daemon_options(postgres, pool_size=3))
    for worker in (1, 2):
        daemon.wait_events("pg_query", ok=True, worker=worker)
    queries = daemon.find("pg_query", ok=True)
    assert {q["role"] for q in queries} == {"worker"}
    backends = {w: {q["backend"] for q in queries if q["worker"] == w} for w in (1, 2)}
    assert not backends[1] & backends[2], "workers share no connection"
    # pool_size connections per worker, none from the master.
    assert wait_until(lambda: worker_connections(postgres) == {"oversipd worker 1": 3, "oversipd worker 2": 3},
                      "3 connections per worker")
    assert daemon.stop() == 0
    daemon.wait_log("pool 'db' closed", count=2)
    wait_until(lambda: worker_connections(postgres) == {}, "the pools' connections to close")


def test_queries_do_not_block_the_reactor(postgres: PostgresServer, oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"slow": SLOW_QUERY}, **daemon_options(postgres, pool_size=1))
    start = daemon.wait_events("sleep_start")[0]["t"]
    done = daemon.wait_events("sleep_done")[0]["t"]
    ticks_during_query = [e for e in daemon.find("tick") if start < e["t"] < done]
    assert len(ticks_during_query) >= 2


def test_server_down_then_back_without_restarting_oversipd(postgres: PostgresServer, oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"pgclient": QUERY_LOOP}, **daemon_options(postgres, pool_size=2))
    daemon.wait_events("pg_query", ok=True)
    workers_before = daemon.worker_pids()
    try:
        down = daemon.mark()
        postgres.stop()
        daemon.wait_events("pg_query", ok=False, since=down, count=2)
        daemon.wait_log("ERROR: <pgclient> query", since=down)
        assert daemon.running
    finally:
        if not postgres.is_running():
            postgres.start()
    back = daemon.mark()
    daemon.wait_events("pg_query", ok=True, since=back, timeout=max(DEFAULT_TIMEOUT, 60))
    assert daemon.running
    assert daemon.worker_pids() == workers_before, "no worker was restarted"
    assert daemon.stop() == 0


@pytest.mark.parametrize("options, complaint", [
    ({"pool_size": 0}, "pool_size: expected an integer >= 1, got 0"),
    ({"pool_size": "10"}, "pool_size: expected an integer >= 1, got '10'"),
    ({"hots": "localhost"}, "hots: unknown connection option"),
    ({"port": [5432]}, "port: expected a string or an integer"),
    ({"on_connect": "setup"}, "on_connect: expected a callable or None"),
    ({"pool_name": ""}, "pool_name: expected a non-empty string"),
])
def test_bad_option_is_fatal_before_the_fork(postgres: PostgresServer, oversipd_daemon,
                                             options: dict[str, Any], complaint: str) -> None:
    daemon = oversipd_daemon(start=False, **daemon_options(postgres, **options))
    fatal_start_line(daemon, complaint)
    assert "[worker" not in daemon.log_text(), "nothing was forked"


@pytest.mark.parametrize("conninfo, server_says", [
    ({"dbname": "no_such_db"}, 'database "no_such_db" does not exist'),
    ({"user": "no_such_role"}, 'role "no_such_role" does not exist'),
    ({"host": "/nonexistent-oversipd-socket-dir"}, "No such file or directory"),
])
def test_unreachable_server_at_start_is_fatal_with_its_message(postgres: PostgresServer, oversipd_daemon,
                                                               conninfo: dict[str, Any], server_says: str) -> None:
    daemon = oversipd_daemon(start=False, **daemon_options(postgres, **conninfo))
    line = fatal_start_line(daemon, "postgresql pool 'db': cannot connect:")
    assert server_says in line + daemon.log_text()


def test_pool_lookup_errors_are_clear(postgres: PostgresServer, oversipd_daemon) -> None:
    daemon = oversipd_daemon(start=False, server_script=POOL_ERRORS,
                             settings={"pgtest": postgres.conninfo()})
    daemon.start()
    unknown, known, in_master = pool_lookup_outcomes(daemon)
    assert unknown["type"] == "UnknownPoolError" and unknown["lookup"]
    assert "no PostgreSQL pool named 'nope' (declared: 'db')" in unknown["message"]
    assert known["type"] is None
    assert in_master["role"] == "master"
    assert in_master["type"] == "PoolNotOpenError" and "opens its pools in its on_started" in in_master["message"]
    assert daemon.stop() == 0


# SIP.md §15: OPTIONS needs no store; MESSAGE queries it (PoolNotOpenError -> the core's 503).
STORE_SCRIPT = sip_store_script("postgresql", "pgtest", """
async with postgresql.pool("db").connection(timeout=5) as connection:
    await connection.execute("SELECT 1")
""")


def test_a_worker_respawned_while_the_store_is_down_serves_degraded_then_recovers(
        postgres: PostgresServer, oversipd_daemon, tmp_path: Path) -> None:
    server = sip_daemon(oversipd_daemon, script=STORE_SCRIPT, core={"pid_file": str(tmp_path / "o.pid")},
                        settings={"pgtest": {**postgres.conninfo(), "pool_size": 1}})
    respawn_while_the_store_is_down(server, postgres, tmp_path / "o.pid", "postgresql pool 'db'", back_timeout=60)
