"""SystemCallbacks (lists for modules); SystemEvents, SipEvents and WebSocketEvents (single handlers for the server script)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable

Callback = Callable[..., Any]
ErrorHandler = Callable[[Callback, BaseException], None]


def describe(fn: Callback) -> str:
    """A callback's name as a log line shows it: module.qualname."""
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


def is_cancellation(error: BaseException) -> bool:
    """True when `error` cancels the running task itself.

    A module may raise (or let through) a CancelledError of its own; that
    is a failure of the callback like any other.  Only a cancellation of
    the task running the list (the worker stopping) must unwind it.
    """
    if not isinstance(error, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def call(fn: Callback, *args: Any) -> None:
    """Call a plain function, or call and await a coroutine function."""
    result = fn(*args)
    if inspect.isawaitable(result):
        await result


class CallbackList:
    """An ordered list of callbacks; calling it registers one (decorator or call)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callback] = []

    def __call__(self, callback: Callback) -> Callback:
        if not callable(callback):
            raise TypeError(f"SystemCallbacks.{self.name} needs a callable, got {callback!r}")
        self._callbacks.append(callback)
        return callback

    def __iter__(self):
        return iter(list(self._callbacks))

    def __len__(self) -> int:
        return len(self._callbacks)

    async def run(self, *args: Any, reverse: bool = False, on_error: ErrorHandler) -> None:
        """Run every callback, one at a time; `on_error` decides what a failure does."""
        callbacks = list(self._callbacks)
        for callback in reversed(callbacks) if reverse else callbacks:
            try:
                await call(callback, *args)
            except BaseException as error:  # SystemExit too: a module must not end the worker
                if is_cancellation(error):
                    raise
                on_error(callback, error)


class _SystemCallbacks:
    def __init__(self) -> None:
        self.on_started = CallbackList("on_started")
        self.on_reload = CallbackList("on_reload")
        self.on_terminated = CallbackList("on_terminated")


class _SystemEvents:
    """One handler per event; a later registration replaces the earlier one."""

    NAMES = ("on_initialize", "on_started", "on_user_reload", "on_terminated")

    def __init__(self) -> None:
        self._handlers: dict[str, Callback] = {}

    def _setter(self, name: str) -> Callable[[Callback], Callback]:
        def register(handler: Callback) -> Callback:
            if not callable(handler):
                raise TypeError(f"SystemEvents.{name} needs a callable, got {handler!r}")
            self._handlers[name] = handler
            return handler
        register.__name__ = name
        return register

    def __getattr__(self, name: str) -> Callable[[Callback], Callback]:
        if name in _SystemEvents.NAMES:
            return self._setter(name)
        raise AttributeError(name)

    def handler(self, name: str) -> Callback | None:
        return self._handlers.get(name)

    async def run(self, name: str, *args: Any) -> None:
        """Run the event's handler, if any; exceptions propagate to the caller."""
        handler = self._handlers.get(name)
        if handler is not None:
            await call(handler, *args)


SystemCallbacks = _SystemCallbacks()
SystemEvents = _SystemEvents()


class _SipEvents:
    """The server script's SIP handler (SIP.md §9); a later registration replaces the earlier one."""

    def __init__(self) -> None:
        self.request_handler: Callback | None = None
        self.client_tls_handler: Callback | None = None
        self.server_tls_handler: Callback | None = None

    def on_request(self, handler: Callback) -> Callback:
        """Set the handler every new request goes to: `handler(request)`, sync or async."""
        self.request_handler = _checked("SipEvents.on_request", handler)
        return handler

    def on_client_tls_handshake(self, handler: Callback) -> Callback:
        """`handler(connection, certificates)` after each TLS handshake on our tls/wss listeners (SIP.md §12)."""
        self.client_tls_handler = _checked("SipEvents.on_client_tls_handshake", handler)
        return handler

    def on_server_tls_handshake(self, handler: Callback) -> Callback:
        """`handler(connection, certificates)` after each outgoing TLS handshake of a profile that asks for it."""
        self.server_tls_handler = _checked("SipEvents.on_server_tls_handshake", handler)
        return handler


class _WebSocketEvents:
    """The server script's WebSocket connection handlers (SIP.md §12)."""

    def __init__(self) -> None:
        self.connection_handler: Callback | None = None
        self.disconnection_handler: Callback | None = None

    def on_connection(self, handler: Callback) -> Callback:
        """`handler(connection, http_request)` before a WebSocket upgrade is accepted; it may reject it."""
        self.connection_handler = _checked("WebSocketEvents.on_connection", handler)
        return handler

    def on_disconnection(self, handler: Callback) -> Callback:
        """`handler(connection, client_closed)` once an accepted WebSocket connection ends."""
        self.disconnection_handler = _checked("WebSocketEvents.on_disconnection", handler)
        return handler


def _checked(name: str, handler: Callback) -> Callback:
    if not callable(handler):
        raise TypeError(f"{name} needs a callable, got {handler!r}")
    return handler


SipEvents = _SipEvents()
WebSocketEvents = _WebSocketEvents()

# The server script's single handlers, as a code swap saves and restores them (oversipd.generations).
_SCRIPT_HANDLERS = ((SipEvents, "request_handler"), (SipEvents, "client_tls_handler"),
                    (SipEvents, "server_tls_handler"), (WebSocketEvents, "connection_handler"),
                    (WebSocketEvents, "disconnection_handler"))


def script_handlers() -> tuple[Callback | None, ...]:
    return tuple(getattr(owner, name) for owner, name in _SCRIPT_HANDLERS)


def set_script_handlers(handlers: tuple[Callback | None, ...] | None = None) -> None:
    """Put saved handlers back; None: forget them all."""
    for (owner, name), handler in zip(_SCRIPT_HANDLERS, handlers or (None,) * len(_SCRIPT_HANDLERS)):
        setattr(owner, name, handler)
