"""oversip-mod-mysql: MySQL/MariaDB connection pools for oversipd (asyncmy).

Declare pools in the master, from the server script; every worker then
opens its own asyncmy pool once its reactor runs (a connection never
crosses the fork).  Each pool is an `oversipd.worker_resource`: the core
opens and closes it; this module keeps only what is MySQL's.

    from oversipd import SystemEvents
    from oversipd.modules import mysql

    @SystemEvents.on_initialize
    def configure():
        mysql.add_pool("db", pool_size=5, unix_socket="/run/mysqld/mysqld.sock", user="app", db="app")

    # in a worker (a callback, a request handler):
    async with mysql.pool("db").acquire() as conn:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT name FROM accounts WHERE id = %s", (42,))
            row = await cursor.fetchone()
"""

from __future__ import annotations

import asyncio
import inspect
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import asyncmy
from asyncmy.connection import Connection
from asyncmy.errors import MySQLError, OperationalError

from oversipd import Launcher, Logger, ResourceError, ResourceNotOpenError
from oversipd.resources import NamedPools, pool_settings_problem, worker_label

__all__ = ["add_pool", "pool", "Pool", "UnknownPoolError", "PoolNotOpenError", "ServerUnavailableError",
           "DEFAULT_POOL_SIZE"]

DEFAULT_POOL_SIZE = 10
# While the server can't be reached, a worker tries to connect again after
# a delay doubling from the first to the last figure (seconds); queries
# that would need a new connection meanwhile fail at once.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0

OnConnect = Callable[[Connection], Any]

log = Logger("Mysql module")

# Options this module sets unless the caller does: a worker-named
# connection, and autocommit (asyncmy discards a pooled connection that
# comes back inside a transaction, so a plain SELECT would cost a new
# connection each time).
DEFAULT_OPTIONS: dict[str, Any] = {"autocommit": True}
# Connection options and the types they take; asyncmy's other keywords
# (conv, ssl, cursor_cls, ...) are passed as they are.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("host", "user", "password", "db", "database", "unix_socket", "charset", "sql_mode",
                     "init_command", "program_name", "read_default_file", "read_default_group"), (str,)),
    **dict.fromkeys(("port", "client_flag", "max_allowed_packet", "stmt_cache_size"), (int,)),
    **dict.fromkeys(("connect_timeout", "read_timeout"), (int, float)),
    **dict.fromkeys(("autocommit", "local_infile", "use_unicode", "binary_prefix", "echo"), (bool,)),
}
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
# asyncmy keywords a pool must not take: a socket made in the master would
# cross the fork; a callback per query is not a connection option.
REFUSED_OPTIONS = {"sock": "a socket opened in the master would cross the fork; give unix_socket or host/port",
                   "query_callback": "not a connection option"}


class UnknownPoolError(LookupError):
    """`pool(name)` for a name no `add_pool` declared."""


class PoolNotOpenError(ResourceNotOpenError):
    """`pool(name)` in a process where that pool is not open (the master, or before on_started)."""


class ServerUnavailableError(OperationalError):
    """A query needed a new connection while the pool waits before connecting again."""


def server_message(error: BaseException) -> str:
    """The server's (or the client library's) own words: `message (error CODE)`."""
    args = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"{args[1]} (error {args[0]})"
    return str(error) or repr(error)


@dataclass(frozen=True)
class PoolSpec:
    """A pool as add_pool declared it; each worker opens one from it."""

    name: str
    size: int
    on_connect: OnConnect | None
    options: dict[str, Any]

    def worker_options(self) -> dict[str, Any]:
        # Name the worker in performance_schema.session_connect_attrs.
        return {**DEFAULT_OPTIONS, "program_name": worker_label(), **self.options}


class Pool(Logger):
    """A worker's pool: asyncmy's, with `on_connect` per new connection and back-off while the server is away.

    `acquire()` is used as asyncmy's, in `async with pool.acquire() as conn`
    (not awaited alone).  Other attributes (size, freesize, ...) are the
    asyncmy pool's.
    """

    def __init__(self, spec: PoolSpec, driver_pool: Any) -> None:
        self.log_id = "Mysql module"
        self.name = spec.name
        self.driver_pool = driver_pool
        self._on_connect = spec.on_connect
        self._configured: set[Connection] = set()   # connections on_connect ran on
        self._failures = 0
        self._retry_at = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver_pool, name)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A connection of this worker's pool, given back when the block ends."""
        connection = await self._take()
        try:
            yield connection
        finally:
            released = self.driver_pool.release(connection)
            if inspect.isawaitable(released):
                await released

    async def _take(self) -> Connection:
        loop_time = _loop_time()
        # Only a connection the pool has to make waits for the back-off:
        # idle ones are still handed out.
        if self._failures and self.driver_pool.freesize == 0 and loop_time < self._retry_at:
            raise ServerUnavailableError(2003, f"mysql pool {self.name!r}: server unreachable; next connection "
                                               f"attempt in {self._retry_at - loop_time:.1f} s")
        try:
            connection = await self.driver_pool.acquire()
        except MySQLError as error:  # acquire raises only when it cannot connect
            self._connect_failed(error, loop_time)
            raise
        if self._failures:
            self.log_system_notice(f"pool {self.name!r}: connected again after {self._failures} failed attempt(s)")
            self._failures = 0
        if self._on_connect is not None and connection not in self._configured:
            await self._configure(connection)
        return connection

    def _connect_failed(self, error: BaseException, loop_time: float) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** self._failures)
        self._failures += 1
        self._retry_at = loop_time + delay
        self.log_system_warn(f"pool {self.name!r}: cannot connect: {server_message(error)}; "
                             f"next attempt in {delay:g} s")

    async def _configure(self, connection: Connection) -> None:
        try:
            await run_on_connect(self._on_connect, connection)  # type: ignore[arg-type]
        except BaseException:
            connection.close()  # never hand out a half-configured connection
            self.driver_pool.release(connection)
            raise
        # Closed connections are never handed out again: forget them.
        if len(self._configured) >= self.driver_pool.maxsize:
            self._configured = {known for known in self._configured if known.connected}
        self._configured.add(connection)



def _loop_time() -> float:
    return asyncio.get_running_loop().time()


async def run_on_connect(on_connect: OnConnect, connection: Connection) -> None:
    result = on_connect(connection)
    if inspect.isawaitable(result):
        await result


_pools: NamedPools[Pool] = NamedPools(
    "MySQL pool", "mysql.add_pool()", unknown_error=UnknownPoolError, not_open_error=PoolNotOpenError,
    not_open_reason="each worker opens its pools before its on_started callbacks")


# --- declaring pools (master, before the fork) -----------------------------

def add_pool(pool_name: str, pool_size: int = DEFAULT_POOL_SIZE, on_connect: OnConnect | None = None,
             **connect_options: Any) -> None:
    """Declare pool `pool_name`: `pool_size` connections per worker, asyncmy `connect_options`.

    Call it from `SystemEvents.on_initialize`.  `on_connect(conn)` (plain or
    async) runs on every new connection before its first use.  A bad option
    is fatal, named.
    """
    problem = _check_options(pool_name, pool_size, on_connect, connect_options)
    if problem is not None:
        Launcher.fatal(f"mysql.add_pool({pool_name!r}): {problem}")
    spec = PoolSpec(pool_name, pool_size, on_connect, dict(connect_options))
    _pools.declare(pool_name, open=lambda: _open_pool(spec), close=_close_pool)
    log.log_system_debug(f"pool {pool_name!r} declared: {pool_size} connection(s) per worker")


def _check_options(pool_name: Any, pool_size: Any, on_connect: Any, options: dict[str, Any]) -> str | None:
    """What is wrong with add_pool's arguments (naming the option), or None."""
    problem = _pools.declaration_problem(pool_name) or pool_settings_problem(pool_size, on_connect)
    if problem is not None:
        return problem
    known = _connect_keywords()
    for key, value in options.items():
        if key in REFUSED_OPTIONS:
            return f"{key}: not accepted ({REFUSED_OPTIONS[key]})"
        if key not in known:
            return f"{key}: unknown connection option (asyncmy's are: {', '.join(sorted(known))})"
        expected = OPTION_TYPES.get(key)
        if expected and not _is_instance(value, expected):
            names = " or ".join(TYPE_NAMES[t] for t in expected)
            return f"{key}: expected {names}, got {value!r}"
    return None


def _is_instance(value: Any, expected: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # True is an int to Python, not to a port
        return bool in expected
    return isinstance(value, expected)


def _connect_keywords() -> set[str]:
    parameters = inspect.signature(Connection.__init__).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY} - set(REFUSED_OPTIONS)


# --- using pools (workers) ---------------------------------------------------

def pool(pool_name: str) -> Pool:
    """This worker's open pool named `pool_name`."""
    return _pools.get(pool_name)


# --- opening in each worker, closing as it ends (oversipd.worker_resource) ---

async def _open_pool(spec: PoolSpec) -> Pool:
    """Connect once, then fill the pool; an unreachable server is fatal with its message."""
    options = spec.worker_options()
    # One connection first: its error is the server's own message, and
    # on_connect gets tried once before any worker serves.
    try:
        probe = await asyncmy.connect(**options)
    except MySQLError as error:
        raise ResourceError(f"cannot connect: {server_message(error)}") from None
    try:
        if spec.on_connect is not None:
            await run_on_connect(spec.on_connect, probe)
    except Exception as error:
        log.log_system_crit(error)
        raise ResourceError(f"on_connect failed: {error}") from None
    finally:
        probe.close()
    try:
        driver_pool = await asyncmy.create_pool(minsize=spec.size, maxsize=spec.size, **options)
    except MySQLError as error:
        raise ResourceError(f"cannot open {spec.size} connection(s): {server_message(error)}") from None
    log.log_system_info(f"pool {spec.name!r}: {spec.size} connection(s) open")
    return Pool(spec, driver_pool)


async def _close_pool(open_pool: Pool) -> None:
    open_pool.driver_pool.close()
    await open_pool.driver_pool.wait_closed()
    log.log_system_info(f"pool {open_pool.name!r} closed")
