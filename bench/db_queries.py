#!/usr/bin/env python3
"""Queries/s of a primary-key SELECT through a pool, in oversipd with 2 workers: asyncmy, aiomysql, psycopg.

One run starts a private MariaDB and a private PostgreSQL (the tests'
helpers: temporary data directories, unix sockets), fills an `accounts`
table of 1000 rows in each, then for each target starts oversipd with 2
workers whose drop-in module opens a pool of `--pool-size` connections and
runs `--concurrency` query loops per worker for `--duration` seconds (after
a warm-up), each loop doing `SELECT name FROM accounts WHERE id = %s` with a
random id and checking the row. The targets take turns round by round, so
background load hits all alike; the median per target is printed.

    python bench/db_queries.py [--duration 3] [--rounds 3] [--concurrency 4] [--pool-size 4]

Targets: `asyncmy` and `aiomysql` (their own pools, autocommit on),
`oversip-mod-mysql` (the module's pool: asyncmy with its back-off wrapper),
and `psycopg` (psycopg_pool.AsyncConnectionPool on PostgreSQL, autocommit on, for scale).
A target whose driver is not installed is skipped with a note.
The server, the daemons and the load share the machine's cores: the
figures compare the drivers, they are not the server's capacity.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the private servers the tests start

from mariadb_server import ACCOUNTS, MariadbServer, started_server  # noqa: E402
from oversipd.testing import Daemon  # noqa: E402

TARGETS = ("asyncmy", "aiomysql", "oversip-mod-mysql", "psycopg")
DRIVER_OF = {"asyncmy": "asyncmy", "aiomysql": "aiomysql", "oversip-mod-mysql": "oversipd.modules.mysql",
             "psycopg": "psycopg_pool"}
WORKERS = 2
RESULT_TIMEOUT = 120.0  # seconds to wait for a worker's figures

# The drop-in every worker runs: open the target's pool, warm up, count queries.
LOAD_MODULE = '''
import asyncio
import random
import time

from oversipd import SystemCallbacks, module_settings
from oversipd.testing import record

SQL = "SELECT name FROM accounts WHERE id = %s"
settings = module_settings("dbbench")
state = {}


async def open_pool():
    target, size, options = settings["target"], settings["pool_size"], settings["options"]
    if target == "asyncmy":
        import asyncmy
        return await asyncmy.create_pool(minsize=size, maxsize=size, autocommit=True, **options)
    if target == "aiomysql":
        import aiomysql
        return await aiomysql.create_pool(minsize=size, maxsize=size, autocommit=True, **options)
    if target == "oversip-mod-mysql":
        from oversipd.modules import mysql
        return mysql.pool("bench")
    from psycopg_pool import AsyncConnectionPool
    from psycopg.conninfo import make_conninfo
    pool = AsyncConnectionPool(make_conninfo("", **options), min_size=size, max_size=size, open=False,
                               kwargs={"autocommit": True})
    await pool.open(wait=True)
    return pool


async def select_mysql(pool, key):
    async with pool.acquire() as connection:
        async with connection.cursor() as cursor:
            await cursor.execute(SQL, (key,))
            return await cursor.fetchone()


async def select_postgres(pool, key):
    async with pool.connection() as connection:
        cursor = await connection.execute(SQL, (key,))
        return await cursor.fetchone()


async def query_loop(pool, select, until, counts):
    rows = settings["rows"]
    while time.monotonic() < until:
        key = random.randint(1, rows)
        row = await select(pool, key)
        if row[0] != f"user{key}":
            raise AssertionError(f"id {key}: got {row!r}")
        counts[0] += 1


async def run():
    pool = await open_pool()
    state["pool"] = pool
    select = select_postgres if settings["target"] == "psycopg" else select_mysql
    loops = settings["concurrency"]
    warm_until = time.monotonic() + settings["warmup"]
    await asyncio.gather(*(query_loop(pool, select, warm_until, [0]) for _ in range(loops)))
    counts = [0]
    start = time.monotonic()
    await asyncio.gather(*(query_loop(pool, select, start + settings["duration"], counts)
                           for _ in range(loops)))
    record("result", queries=counts[0], seconds=time.monotonic() - start)


@SystemCallbacks.on_started
def start():
    state["task"] = asyncio.get_running_loop().create_task(run())
    state["task"].add_done_callback(lambda task: task.cancelled() or task.exception() is None
                                    or record("failed", error=repr(task.exception())))


@SystemCallbacks.on_terminated
async def stop(error):
    task = state.get("task")
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    pool = state.get("pool")
    if pool is not None and settings["target"] in ("asyncmy", "aiomysql"):
        pool.close()
        await pool.wait_closed()
    elif pool is not None and settings["target"] == "psycopg":
        await pool.close()
'''

# The oversip-mod-mysql target declares its pool the way users do.
MODULE_SERVER_SCRIPT = '''
from oversipd import SystemEvents, module_settings
from oversipd.modules import mysql

@SystemEvents.on_initialize
def configure():
    settings = module_settings("dbbench")
    mysql.add_pool("bench", pool_size=settings["pool_size"], **settings["options"])
'''


def installed(target: str) -> bool:
    try:
        return importlib.util.find_spec(DRIVER_OF[target]) is not None
    except ModuleNotFoundError:
        return False


class PostgresForBench:
    """The PostgreSQL tests' private server, with the same accounts table."""

    def __init__(self) -> None:
        from test_mod_postgresql import PostgresServer  # the tests' helper: initdb, pg_ctl
        self.server = PostgresServer(Path(tempfile.mkdtemp(prefix="ovs-pg-bench-")))

    def start(self) -> None:
        import psycopg
        self.server.initdb()
        self.server.start()
        with psycopg.connect(**self.server.conninfo(), autocommit=True) as connection:
            connection.execute("CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL)")
            connection.execute("INSERT INTO accounts SELECT g, 'user' || g FROM generate_series(1, %s) g",
                               (ACCOUNTS,))

    def remove(self) -> None:
        import shutil
        if self.server.is_running():
            self.server.stop()
        shutil.rmtree(self.server.base, ignore_errors=True)


def measure(target: str, options: dict[str, Any], args: argparse.Namespace, directory: Path) -> float:
    """One round of one target: the queries/s of both workers together."""
    settings = {"target": target, "options": options, "pool_size": args.pool_size,
                "concurrency": args.concurrency, "duration": args.duration, "warmup": args.warmup,
                "rows": ACCOUNTS}
    directory.mkdir(parents=True)
    daemon = Daemon(directory, modules={"dbbench": LOAD_MODULE}, workers=WORKERS,
                    core={"log_level": "notice"}, settings={"dbbench": settings},
                    server_script=MODULE_SERVER_SCRIPT if target == "oversip-mod-mysql" else None)
    try:
        daemon.start()
        results = daemon.wait_events("result", count=WORKERS, timeout=RESULT_TIMEOUT)
        if daemon.find("failed"):
            raise RuntimeError(f"{target}: {daemon.find('failed')[0]['error']}")
        daemon.stop()
    finally:
        daemon.cleanup()
    return sum(result["queries"] / result["seconds"] for result in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per worker and round")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of queries before measuring")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="query loops per worker")
    parser.add_argument("--pool-size", type=int, default=4, help="connections per worker")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    missing = [t for t in targets if not installed(t)]
    for target in missing:
        print(f"skipping {target}: {DRIVER_OF[target]} is not installed", file=sys.stderr)
    targets = [t for t in targets if t not in missing]

    mariadb: MariadbServer | None = None
    postgres: PostgresForBench | None = None
    rates: dict[str, list[float]] = {t: [] for t in targets}
    work = Path(tempfile.mkdtemp(prefix="ovs-bench-db-"))
    try:
        mariadb = started_server()
        my_options = {"unix_socket": str(mariadb.socket), "user": "root", "db": "oversipd_test"}
        if "psycopg" in targets:
            postgres = PostgresForBench()
            postgres.start()
        for round_number in range(args.rounds):
            order = targets[round_number % len(targets):] + targets[:round_number % len(targets)]
            for target in order:
                options = postgres.server.conninfo() if target == "psycopg" else my_options  # type: ignore[union-attr]
                rate = measure(target, options, args, work / f"r{round_number}-{target}")
                rates[target].append(rate)
                print(f"round {round_number + 1} {target:<18} {rate:8.0f} queries/s", file=sys.stderr)
    finally:
        if mariadb is not None:
            mariadb.remove()
        if postgres is not None:
            postgres.remove()
        import shutil
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nPrimary-key SELECT through a pool, oversipd with {WORKERS} workers, {args.concurrency} loops "
          f"and {args.pool_size} connections per worker, {args.duration:g} s x {args.rounds} rounds (median):\n")
    print("| target | server | queries/s (median) | rounds |")
    print("|---|---|---:|---|")
    for target in targets:
        server = "PostgreSQL" if target == "psycopg" else "MariaDB"
        rounds = ", ".join(f"{rate:.0f}" for rate in rates[target])
        print(f"| {target} | {server} | {statistics.median(rates[target]):.0f} | {rounds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
