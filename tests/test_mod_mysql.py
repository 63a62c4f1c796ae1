"""oversip-mod-mysql against a real MariaDB server started for this test session.

The server comes from Debian's mariadb-server package (`make test` installs
it): mariadb-install-db into a temporary datadir, mariadbd on a unix socket
only, performance_schema on (it holds the connection attributes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from db_helpers import (fatal_start_line, pool_daemon_options, pool_errors_script, pool_lookup_outcomes,
                        respawn_while_the_store_is_down, run_in_each_worker, sip_store_script, wait_until)
from mariadb_server import MariadbServer, started_server
from sip_helpers import sip_daemon
from oversipd.testing import DEFAULT_TIMEOUT, Daemon

SERVER_BACK_TIMEOUT = max(DEFAULT_TIMEOUT, 60)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariadbServer]:
    server = started_server()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def running_mariadb(mariadb: MariadbServer) -> MariadbServer:
    """The session's server, started again if a test left it stopped."""
    if not mariadb.is_running():
        mariadb.start()
    return mariadb


# --- the daemon's files ---------------------------------------------------------

# Queries the pool from every worker, over and over, and records each outcome.
QUERY_LOOP = """
import asyncio

from asyncmy.errors import MySQLError
from oversipd import Logger, SystemCallbacks
from oversipd.modules import mysql
from oversipd.testing import record

log = Logger("myclient")
running = {}


async def query_forever():
    n = 0
    while True:
        n += 1
        try:
            async with mysql.pool("db").acquire() as connection:
                async with connection.cursor() as cursor:
                    await cursor.execute("SELECT CONNECTION_ID(), name FROM accounts WHERE id = %s", (n % 1000 + 1,))
                    connection_id, name = await cursor.fetchone()
            record("my_query", ok=True, n=n, connection=connection_id, name=name)
        except MySQLError as error:
            log.log_system_error(f"query {n} failed: {error}")
            record("my_query", ok=False, n=n, error=str(error))
        await asyncio.sleep(0.1)
""" + run_in_each_worker("query_forever")

# on_connect runs on each new connection before its first use.
ON_CONNECT = """
from oversipd import SystemCallbacks, SystemEvents, module_settings
from oversipd.modules import mysql
from oversipd.testing import record


async def name_session(connection):
    async with connection.cursor() as cursor:
        await cursor.execute("SET @oversipd_session = 'configured'")
    record("on_connect")


@SystemEvents.on_initialize
def configure():
    mysql.add_pool("db", pool_size=2, on_connect=name_session, **module_settings("mytest"))


@SystemCallbacks.on_started
async def read_back():
    async with mysql.pool("db").acquire() as connection:
        async with connection.cursor() as cursor:
            await cursor.execute("SELECT @oversipd_session")
            (value,) = await cursor.fetchone()
    record("session", value=value)
"""

# What pool() says for a name never declared, and in the master.
POOL_ERRORS = pool_errors_script("mysql", "mytest")


def daemon_options(mariadb: MariadbServer, **pool_options: Any) -> dict[str, Any]:
    return pool_daemon_options("mysql", "mytest", mariadb.connect_options(), **pool_options)


def worker_connections(mariadb: MariadbServer) -> dict[str, int]:
    """{program_name: connections} of the oversipd workers, from performance_schema."""
    rows = mariadb.query("SELECT ATTR_VALUE, COUNT(*) FROM performance_schema.session_connect_attrs "
                         "WHERE ATTR_NAME = 'program_name' AND ATTR_VALUE LIKE 'oversipd worker %' GROUP BY 1")
    return {name: int(count) for name, count in rows}


# --- tests -------------------------------------------------------------------------

def test_every_worker_queries_on_its_own_connections(running_mariadb: MariadbServer, oversipd_daemon) -> None:
    daemon: Daemon = oversipd_daemon(modules={"myclient": QUERY_LOOP}, workers=2,
                                     **daemon_options(running_mariadb, pool_size=3))
    for worker in (1, 2):
        daemon.wait_events("my_query", ok=True, worker=worker, count=3)
    queries = daemon.find("my_query", ok=True)
    assert {q["role"] for q in queries} == {"worker"}
    assert all(q["name"] == f"user{q['n'] % 1000 + 1}" for q in queries)
    connections = {w: {q["connection"] for q in queries if q["worker"] == w} for w in (1, 2)}
    assert not connections[1] & connections[2], "workers share no connection"
    # pool_size connections per worker, each named after its worker; none from the master.
    assert wait_until(lambda: worker_connections(running_mariadb) == {"oversipd worker 1": 3,
                                                                      "oversipd worker 2": 3},
                      "3 connections per worker")
    assert daemon.stop() == 0
    daemon.wait_log("pool 'db' closed", count=2)
    wait_until(lambda: worker_connections(running_mariadb) == {}, "the pools' connections to close")


def test_server_stopped_then_back_without_restarting_oversipd(running_mariadb: MariadbServer,
                                                              oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"myclient": QUERY_LOOP}, workers=2,
                             **daemon_options(running_mariadb, pool_size=2))
    for worker in (1, 2):
        daemon.wait_events("my_query", ok=True, worker=worker)
    workers_before = daemon.worker_pids()
    try:
        down = daemon.mark()
        running_mariadb.stop()
        for worker in (1, 2):
            daemon.wait_events("my_query", ok=False, since=down, worker=worker, count=2)
        daemon.wait_log("ERROR: <myclient> query", since=down)
        # The pool's own attempts are spaced out, and say why they fail.
        daemon.wait_log("WARN: <Mysql module> pool 'db': cannot connect:", since=down)
        daemon.wait_log("next attempt in 0.2 s", since=down)
        assert daemon.running
    finally:
        back = daemon.mark()  # before the start: a worker may reconnect before start() returns
        if not running_mariadb.is_running():
            running_mariadb.start()
    for worker in (1, 2):
        daemon.wait_events("my_query", ok=True, since=back, worker=worker, timeout=SERVER_BACK_TIMEOUT)
    # (a worker whose failures were all queries on lost connections never had to wait)
    daemon.wait_log("pool 'db': connected again", since=back)
    assert daemon.running
    assert daemon.worker_pids() == workers_before, "no worker was restarted"
    assert daemon.stop() == 0


def test_on_connect_configures_each_new_connection(running_mariadb: MariadbServer, oversipd_daemon) -> None:
    daemon = oversipd_daemon(server_script=ON_CONNECT, settings={"mytest": running_mariadb.connect_options()})
    assert daemon.wait_events("session")[0]["value"] == "configured"
    daemon.wait_events("on_connect", count=2)  # the probe's, then the pooled one's
    assert daemon.stop() == 0


@pytest.mark.parametrize("options, complaint", [
    ({"pool_size": 0}, "pool_size: expected an integer >= 1, got 0"),
    ({"pool_size": "10"}, "pool_size: expected an integer >= 1, got '10'"),
    ({"hots": "localhost"}, "hots: unknown connection option"),
    ({"port": "3306"}, "port: expected an integer, got '3306'"),
    ({"autocommit": "yes"}, "autocommit: expected true or false, got 'yes'"),
    ({"on_connect": "setup"}, "on_connect: expected a callable or None"),
    ({"pool_name": ""}, "pool_name: expected a non-empty string"),
])
def test_bad_option_is_fatal_before_the_fork(running_mariadb: MariadbServer, oversipd_daemon,
                                             options: dict[str, Any], complaint: str) -> None:
    daemon = oversipd_daemon(start=False, **daemon_options(running_mariadb, **options))
    fatal_start_line(daemon, complaint)
    assert "[worker" not in daemon.log_text(), "nothing was forked"


@pytest.mark.parametrize("options, server_says", [
    ({"db": "no_such_db"}, "Unknown database 'no_such_db' (error 1049)"),
    ({"user": "no_such_user"}, "Access denied for user 'no_such_user'@'localhost'"),
    ({"unix_socket": "/nonexistent-oversipd-dir/mysqld.sock"}, "No such file or directory"),
])
def test_unreachable_server_at_start_is_fatal_with_its_message(running_mariadb: MariadbServer, oversipd_daemon,
                                                               options: dict[str, Any], server_says: str) -> None:
    daemon = oversipd_daemon(start=False, **daemon_options(running_mariadb, **options))
    line = fatal_start_line(daemon, "mysql pool 'db': cannot connect:")
    assert server_says in line


def test_pool_lookup_errors_are_clear(running_mariadb: MariadbServer, oversipd_daemon) -> None:
    daemon = oversipd_daemon(start=False, server_script=POOL_ERRORS,
                             settings={"mytest": running_mariadb.connect_options()})
    daemon.start()
    unknown, known, in_master = pool_lookup_outcomes(daemon)
    assert unknown["type"] == "UnknownPoolError" and unknown["lookup"]
    assert "no MySQL pool named 'nope' (declared: 'db')" in unknown["message"]
    assert known["type"] is None
    assert in_master["role"] == "master"
    assert in_master["type"] == "PoolNotOpenError" and "opens its pools before its on_started" in in_master["message"]
    assert daemon.stop() == 0


EXAMPLE = Path(__file__).resolve().parents[1] / "mods" / "oversip-mod-mysql" / "examples" / "lookup_server.py"


def test_the_lookup_example_finds_the_account_on_reload(running_mariadb: MariadbServer, oversipd_daemon) -> None:
    daemon = oversipd_daemon(server_script=EXAMPLE.read_text(), workers=2,
                             settings={"accounts_db": running_mariadb.connect_options(), "lookup": {"account": 5}})
    daemon.reload()
    daemon.wait_log("INFO: <Lookup example> [user] account 5: user5", count=2)
    daemon.set_settings("lookup", {"account": 100000})
    daemon.reload()
    daemon.wait_log("account 100000: not found", count=2)
    assert daemon.stop() == 0


# SIP.md §15: OPTIONS needs no store; MESSAGE queries it (PoolNotOpenError -> the core's 503).
STORE_SCRIPT = sip_store_script("mysql", "mytest", """
async with mysql.pool("db").acquire() as connection:
    async with connection.cursor() as cursor:
        await cursor.execute("SELECT 1")
""")


def test_a_worker_respawned_while_the_store_is_down_serves_degraded_then_recovers(
        running_mariadb: MariadbServer, oversipd_daemon, tmp_path: Path) -> None:
    server = sip_daemon(oversipd_daemon, script=STORE_SCRIPT, core={"pid_file": str(tmp_path / "o.pid")},
                        settings={"mytest": {**running_mariadb.connect_options(), "pool_size": 1}})
    respawn_while_the_store_is_down(server, running_mariadb, tmp_path / "o.pid", "mysql pool 'db'",
                                    back_timeout=SERVER_BACK_TIMEOUT)
