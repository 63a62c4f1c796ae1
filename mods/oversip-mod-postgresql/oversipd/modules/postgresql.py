"""oversip-mod-postgresql: PostgreSQL connection pools for oversipd (psycopg 3).

Declare pools in the master, from the server script; every worker then
opens its own `psycopg_pool.AsyncConnectionPool` once its reactor runs
(a connection never crosses the fork).  Each pool is an
`oversipd.worker_resource`: the core opens and closes it; this module
keeps only what is psycopg's:

    from oversipd import SystemEvents
    from oversipd.modules import postgresql

    @SystemEvents.on_initialize
    def configure():
        postgresql.add_pool("db", pool_size=5, host="/run/postgresql", dbname="app")

    # in a worker (a callback, a request handler):
    async with postgresql.pool("db").connection() as conn:
        cursor = await conn.execute("SELECT now()")
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from oversipd import Launcher, Logger, ResourceError, ResourceNotOpenError
from oversipd.resources import NamedPools, pool_settings_problem, worker_label

__all__ = ["add_pool", "pool", "UnknownPoolError", "PoolNotOpenError", "DEFAULT_POOL_SIZE"]

DEFAULT_POOL_SIZE = 10
OPEN_TIMEOUT = 30.0       # seconds a worker waits at start for its pool to fill
CLOSE_TIMEOUT = 5.0       # seconds on_terminated waits for the pool's tasks
# A lost connection is re-made with a doubling delay; after this long the
# attempt stops and the next client that finds the pool empty starts a new
# one.  Short, so that a server back after a long outage is used quickly.
RECONNECT_TIMEOUT = 30.0

OnConnect = Callable[[psycopg.AsyncConnection[Any]], Any]

log = Logger("Postgresql module")

# psycopg_pool logs every connection handed out at INFO: per-query noise.
# Its warnings (a failed connection attempt, with the server's own message)
# still reach the daemon's log.
logging.getLogger("psycopg.pool").setLevel(logging.WARNING)


class UnknownPoolError(LookupError):
    """`pool(name)` for a name no `add_pool` declared."""


class PoolNotOpenError(ResourceNotOpenError):
    """`pool(name)` in a process where that pool is not open (the master, or before on_started)."""


@dataclass(frozen=True)
class PoolSpec:
    """A pool as add_pool declared it; each worker opens one from it."""

    name: str
    size: int
    on_connect: OnConnect | None
    params: dict[str, str]

    def worker_conninfo(self) -> str:
        # Name the worker in pg_stat_activity unless the user chose a name.
        params = {"application_name": worker_label(), **self.params}
        return make_conninfo("", **params)


_pools: NamedPools[AsyncConnectionPool[Any]] = NamedPools(
    "PostgreSQL pool", "postgresql.add_pool()", unknown_error=UnknownPoolError, not_open_error=PoolNotOpenError,
    not_open_reason="each worker opens its pools in its on_started callbacks")


# --- declaring pools (master, before the fork) -----------------------------

def add_pool(pool_name: str, pool_size: int = DEFAULT_POOL_SIZE, on_connect: OnConnect | None = None,
             **conninfo: Any) -> None:
    """Declare pool `pool_name`: `pool_size` connections per worker, libpq `conninfo` keywords.

    Call it from `SystemEvents.on_initialize`.  `on_connect(conn)` (plain or
    async) runs on every new connection.  A bad option is fatal.
    """
    problem = _check_options(pool_name, pool_size, on_connect, conninfo)
    if problem is not None:
        Launcher.fatal(f"postgresql.add_pool({pool_name!r}): {problem}")
    params = {key: str(value) for key, value in conninfo.items()}
    spec = PoolSpec(pool_name, pool_size, on_connect, params)
    _pools.declare(pool_name, open=lambda: _open_pool(spec), close=_close_pool)
    log.log_system_debug(f"pool {pool_name!r} declared: {pool_size} connection(s) per worker")


def _check_options(pool_name: Any, pool_size: Any, on_connect: Any, conninfo: dict[str, Any]) -> str | None:
    """What is wrong with add_pool's arguments (naming the option), or None."""
    problem = _pools.declaration_problem(pool_name) or pool_settings_problem(pool_size, on_connect)
    if problem is not None:
        return problem
    known = _libpq_keywords()
    for key, value in conninfo.items():
        if key not in known:
            return f"{key}: unknown connection option (libpq's are: {', '.join(sorted(known))})"
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return f"{key}: expected a string or an integer, got {value!r}"
    try:
        make_conninfo("", **{key: str(value) for key, value in conninfo.items()})
    except psycopg.Error as error:
        return f"invalid connection options: {error}"
    return None


def _libpq_keywords() -> set[str]:
    return {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}


# --- using pools (workers) ---------------------------------------------------

def pool(pool_name: str) -> AsyncConnectionPool[Any]:
    """This worker's open pool named `pool_name`."""
    return _pools.get(pool_name)


# --- opening in each worker, closing as it ends (oversipd.worker_resource) ---

async def _open_pool(spec: PoolSpec) -> AsyncConnectionPool[Any]:
    """Connect once, then fill the pool; an unreachable server is fatal with its message."""
    conninfo = spec.worker_conninfo()
    # One connection first: when the server can't be reached, its own
    # message is what the operator needs (the pool would only time out).
    await _probe(spec, conninfo)
    new_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo, min_size=spec.size, max_size=spec.size, open=False, name=spec.name,
        configure=_configure_with(spec.on_connect) if spec.on_connect else None,
        # A connection the server closed (restart, failover) is replaced
        # before a client gets it, instead of failing the client's query.
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=RECONNECT_TIMEOUT, reconnect_failed=_reconnect_failed)
    try:
        await new_pool.open(wait=True, timeout=OPEN_TIMEOUT)
    except PoolTimeout:
        await new_pool.close()
        raise ResourceError(f"{spec.size} connection(s) not open after {OPEN_TIMEOUT:g} s "
                            "(the warnings above say why)") from None
    log.log_system_info(f"pool {spec.name!r}: {spec.size} connection(s) open")
    return new_pool


async def _probe(spec: PoolSpec, conninfo: str) -> None:
    try:
        connection = await psycopg.AsyncConnection.connect(conninfo)
    except psycopg.Error as error:
        raise ResourceError(f"cannot connect: {error}") from None
    try:
        if spec.on_connect is not None:
            await _configure_with(spec.on_connect)(connection)
    except Exception as error:
        log.log_system_crit(error)
        raise ResourceError(f"on_connect failed: {error}") from None
    finally:
        await connection.close()


def _configure_with(on_connect: OnConnect) -> Callable[[psycopg.AsyncConnection[Any]], Any]:
    """The pool's `configure`: run on_connect, then end a transaction it left open."""
    async def configure(connection: psycopg.AsyncConnection[Any]) -> None:
        result = on_connect(connection)
        if inspect.isawaitable(result):
            await result
        # The pool only takes idle connections; a SET or a query in
        # on_connect leaves a transaction open unless committed.
        if connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            await connection.commit()
    return configure


def _reconnect_failed(failed_pool: AsyncConnectionPool[Any]) -> None:
    log.log_system_error(f"pool {failed_pool.name!r}: could not reconnect for {RECONNECT_TIMEOUT:g} s; "
                         "the next query that needs a connection tries again")


async def _close_pool(open_pool: AsyncConnectionPool[Any]) -> None:
    await open_pool.close(timeout=CLOSE_TIMEOUT)
    log.log_system_info(f"pool {open_pool.name!r} closed")
