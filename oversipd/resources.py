"""Worker resources: declared once in the master, opened in each worker, closed as it ends.

A connection pool, a client socket, a file a worker writes: anything a
worker must own for itself, because an open connection must never cross
the fork.  A module declares the resource in the master (at import time
or from `SystemEvents.on_initialize`); each worker opens its own before
any `SystemCallbacks.on_started` callback runs, and closes it after the
last `on_terminated` callback, in reverse order of opening:

    from oversipd import ResourceError, worker_resource

    async def connect():
        try:
            return await Client.connect("/run/cache.sock")
        except OSError as error:
            raise ResourceError(f"cannot connect: {error}") from None  # fatal, named

    cache = worker_resource("cache client", open=connect, close=lambda client: client.close())

    # in a worker (a callback, a request handler):
    await cache.get().lookup("key")

An open that fails at the daemon's first start is fatal (the daemon exits
1) with a CRIT line naming the resource.  Once the daemon is ready, a worker
that starts later (a respawn, one more worker) serves without a resource it
cannot open: it is *degraded*, `get()` raises ResourceNotOpenError (which
the SIP core answers with 503 + Retry-After), and the open is retried in the
background with back-off until it succeeds (SIP.md §15: a store that goes
away never stops the daemon).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any, Awaitable, Callable, Generic, TypeVar

from . import process
from .launcher import Launcher
from .logger import Logger

__all__ = ["worker_resource", "WorkerResource", "ResourceError", "ResourceNotOpenError", "NamedPools",
           "pool_settings_problem", "worker_label"]

T = TypeVar("T")
Opener = Callable[[], "T | Awaitable[T]"]
Closer = Callable[[T], "Any | Awaitable[Any]"]

_log = Logger("Resources")


class ResourceError(Exception):
    """Raised by an opener: the resource cannot be opened, for the reason in the message.

    The message is what the operator reads (the server's own words, the
    option at fault); no traceback is logged for it.
    """


class ResourceNotOpenError(RuntimeError):
    """`get()` where the resource is not open: the master, or a worker before it opened it."""


class WorkerResource(Generic[T]):
    """One declared resource: `get()` is this worker's open value."""

    def __init__(self, name: str, open: Opener[T], close: Closer[T] | None) -> None:
        self.name = name
        self._open = open
        self._close = close
        self._value: T | None = None
        # The process that opened it: a value is never valid across a fork.
        self._owner: int | None = None

    def __repr__(self) -> str:
        return f"<WorkerResource {self.name!r} {'open' if self.is_open else 'not open'}>"

    @property
    def is_open(self) -> bool:
        """True in a worker once the resource is open there (and until it is closed)."""
        return self._owner == os.getpid()

    def get(self) -> T:
        """This worker's open value; ResourceNotOpenError anywhere else."""
        if not self.is_open:
            raise ResourceNotOpenError(
                f"{self.name} is not open in this process: each worker opens its resources "
                "before its on_started callbacks (never in the master)")
        return self._value  # type: ignore[return-value]

    async def open_here(self) -> None:
        value = await _result(self._open())
        self._value, self._owner = value, os.getpid()

    async def close_here(self) -> None:
        value, self._value, self._owner = self._value, None, None
        if self._close is not None:
            await _result(self._close(value))  # type: ignore[arg-type]


_declared: list[WorkerResource[Any]] = []
_opened: list[WorkerResource[Any]] = []   # in a worker, in the order they opened
_retrying: dict[WorkerResource[Any], "asyncio.Task[None]"] = {}   # in a degraded worker
# The master clears this once the daemon is ready: a worker forked after
# that (a respawn) is degraded by a failed open, not fatal.
_failure_is_fatal = True
_on_degraded_change: list[Callable[[list[str]], None]] = []
RETRY_FIRST = 1.0     # seconds before the first retry of a failed open
RETRY_MAX = 8.0       # the back-off doubles up to this
RETRYING = "this worker could not open it and retries in the background"


def worker_resource(name: str, open: Opener[T], close: Closer[T] | None = None) -> WorkerResource[T]:
    """Declare a resource each worker opens with `open()` and closes with `close(value)`.

    Call it in the master, at import time or from `SystemEvents.on_initialize`.
    `open` and `close` may be plain or async functions; `name` says what it
    is in log lines ("postgresql pool 'db'") and must be unique.
    """
    if process.role != "master":
        raise RuntimeError(f"worker_resource({name!r}) called in a worker: declare resources in the "
                           "master (at import time or from SystemEvents.on_initialize)")
    if not isinstance(name, str) or not name:
        raise ValueError(f"worker_resource: the name must be a non-empty string, got {name!r}")
    if any(resource.name == name for resource in _declared):
        raise ValueError(f"worker_resource: a resource named {name!r} was already declared")
    for role, function in (("open", open), ("close", close)):
        if function is not None and not callable(function):
            raise TypeError(f"worker_resource({name!r}): {role} must be callable, got {function!r}")
    resource: WorkerResource[T] = WorkerResource(name, open, close)
    _declared.append(resource)
    return resource


# --- resources a module declares by name (a database module's pools) ---------------

class NamedPools(Generic[T]):
    """A module's resources of one kind, declared by name: checked, declared, looked up in a worker.

    `kind` names them in messages ("MySQL pool"; the resource is named
    "mysql pool 'db'"), `declare_with` is the call that declares one
    ("mysql.add_pool()"); `pool(name)` raises `unknown_error` (a LookupError)
    for a name never declared and `not_open_error` where it is not open.
    """

    def __init__(self, kind: str, declare_with: str, *, unknown_error: type[LookupError] = LookupError,
                 not_open_error: type[Exception] = ResourceNotOpenError,
                 not_open_reason: str = "each worker opens its resources before its on_started callbacks") -> None:
        self.kind = kind
        self.declare_with = declare_with
        self.unknown_error = unknown_error
        self.not_open_error = not_open_error
        self.not_open_reason = not_open_reason
        self._resources: dict[str, WorkerResource[T]] = {}

    def declaration_problem(self, name: Any) -> str | None:
        """What forbids declaring `name` here (a worker, an empty or taken name), or None."""
        if process.role != "master":
            return "called in a worker; declare pools in the master, from SystemEvents.on_initialize"
        if not isinstance(name, str) or not name:
            return f"pool_name: expected a non-empty string, got {name!r}"
        if name in self._resources:
            return "pool_name: a pool of this name was already added"
        return None

    def declare(self, name: str, open: Opener[T], close: Closer[T] | None = None) -> WorkerResource[T]:
        """Declare resource `name` (a worker_resource named after the kind) for every worker."""
        resource = worker_resource(f"{self.kind.lower()} {name!r}", open=open, close=close)
        self._resources[name] = resource
        return resource

    def get(self, name: str) -> T:
        """This worker's open value of resource `name`."""
        if name not in self._resources:
            declared = ", ".join(repr(known) for known in sorted(self._resources)) or "none"
            raise self.unknown_error(f"no {self.kind} named {name!r} (declared: {declared}); "
                                     f"declare it with {self.declare_with} in SystemEvents.on_initialize")
        resource = self._resources[name]
        if not resource.is_open:
            reason = (RETRYING if resource in _retrying else self.not_open_reason)
            raise self.not_open_error(f"{self.kind} {name!r} is not open in this process: {reason}")
        return resource.get()


def pool_settings_problem(pool_size: Any, on_connect: Any) -> str | None:
    """What is wrong with a pool's `pool_size` (an int >= 1) or `on_connect` (callable or None), or None."""
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        return f"pool_size: expected an integer >= 1, got {pool_size!r}"
    if on_connect is not None and not callable(on_connect):
        return f"on_connect: expected a callable or None, got {on_connect!r}"
    return None


def worker_label() -> str:
    """How this worker names itself to a server it connects to ("oversipd worker 2")."""
    return f"oversipd worker {process.worker_id}"


# --- the master's side -------------------------------------------------------------

def first_start_done() -> None:
    """The daemon is ready: from now on a worker that cannot open a resource is degraded, not fatal."""
    global _failure_is_fatal
    _failure_is_fatal = False


def failure_is_fatal() -> bool:
    """True while the daemon's first start is under way (SPEC: a resource that cannot open is fatal)."""
    return _failure_is_fatal


# --- the worker's side (oversipd.worker calls these) --------------------------------

def on_degraded_change(callback: Callable[[list[str]], None]) -> None:
    """`callback(names)` whenever the resources this worker could not open change ([] = none)."""
    _on_degraded_change.append(callback)


def degraded() -> list[str]:
    """The names of the resources this worker could not open (yet)."""
    return [resource.name for resource in _retrying]


async def open_declared() -> None:
    """Open every declared resource, in declaration order; a failure is fatal and named, or degrades."""
    for resource in _declared:
        _log.log_system_debug(f"{resource.name}: opening")
        problem = await _try_open(resource)
        if problem is None:
            _opened.append(resource)
            _log.log_system_info(f"{resource.name}: open")
        elif _failure_is_fatal:
            Launcher.fatal(f"{resource.name}: {problem}")
        else:
            _log.log_system_error(f"{resource.name}: {problem}; serving without it, retrying in the background")
            _retrying[resource] = asyncio.get_running_loop().create_task(_retry(resource))
    if _retrying:
        _tell_degraded()


async def _try_open(resource: WorkerResource[Any], retry: bool = False) -> str | None:
    """None when `resource` opened here, else why not (a ResourceError's message, or the exception).

    An unexpected exception's traceback is logged on the first try only: a
    retry every few seconds must not fill the log with the same one.
    """
    try:
        await resource.open_here()
    except ResourceError as error:
        return str(error)
    except Exception as error:
        if not retry:
            _log.log_system_crit(f"{resource.name}: open raised:")
            _log.log_system_crit(error)
        return f"cannot open: {error!r}"
    return None


async def _retry(resource: WorkerResource[Any]) -> None:
    """Open `resource` again and again, the wait doubling up to RETRY_MAX, until it opens."""
    delay = RETRY_FIRST
    while True:
        await asyncio.sleep(delay)
        problem = await _try_open(resource, retry=True)
        if problem is None:
            break
        _log.log_system_debug(f"{resource.name}: still not open ({problem}); next try in {delay:g} s")
        delay = min(2 * delay, RETRY_MAX)
    del _retrying[resource]
    _opened.append(resource)
    _log.log_system_notice(f"{resource.name}: open again; no longer degraded")
    _tell_degraded()


def _tell_degraded() -> None:
    names = degraded()
    for callback in _on_degraded_change:
        try:
            callback(names)
        except Exception as error:   # a report that fails must not stop the retries
            _log.log_system_error(error)


async def close_opened() -> None:
    """Close what this worker opened, last opened first; a failure is logged, the rest still close."""
    for task in _retrying.values():
        task.cancel()
    await asyncio.gather(*_retrying.values(), return_exceptions=True)
    _retrying.clear()
    while _opened:
        resource = _opened.pop()
        try:
            await resource.close_here()
        except Exception as error:
            _log.log_system_crit(f"{resource.name}: close raised:")
            _log.log_system_crit(error)
            continue
        _log.log_system_info(f"{resource.name}: closed")


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
