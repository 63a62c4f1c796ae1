"""Requests the server script originates (SIP.md §13, OverSIP's Uac and UacRequest).

`Uac(profile)` has Proxy's callbacks and profile; `route(UacRequest(...))`
fills in what a UAC must (RFC 3261 §8.1.1: Call-ID, From tag, CSeq,
Max-Forwards; the engine adds Via with its branch) and hands the request
to the worker's ProxyEngine, which sends it as it forwards a proxied one:
the same client transaction, retransmissions, timers, DNS and next-hop
connections, with nobody upstream to answer.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Mapping

from ..syntax.message import Request as Message
from ..syntax.uri import SipUri, parse_uri
from .engine import Proxy, ProxyEngine

DEFAULT_MAX_FORWARDS = 70
DEFAULT_FROM_USER = "oversipd"
# No client transaction of their own (RFC 3261 §17.1.1.3, §9.1): never sent by a UAC alone.
NOT_ORIGINATED = frozenset(("ACK", "CANCEL"))
_running: ProxyEngine | None = None                     # this worker's engine, once its SIP service is up
_waiting: list[Callable[[ProxyEngine], None]] = []   # the requests routed before that


def serve(engine: ProxyEngine) -> None:
    """The worker's SIP service is up (oversipd.sip.service): the requests that waited for it go now."""
    global _running
    _running = engine
    while _waiting:
        _waiting.pop(0)(engine)


def stop(engine: ProxyEngine) -> None:
    global _running
    if _running is engine:
        _running = None


class UacRequest:
    """What a Uac sends: method, Request-URI, From, To (the R-URI by default), headers and body."""

    def __init__(self, method: str, ruri: SipUri | str, from_: str | None = None, to: str | None = None,
                 body: bytes = b"", headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
                 call_id: str | None = None, cseq: int = 1, max_forwards: int = DEFAULT_MAX_FORWARDS) -> None:
        self.method = method.upper()
        if self.method in NOT_ORIGINATED:
            raise ValueError(f"a Uac does not send {self.method} (it belongs to a transaction it does not hold)")
        self.ruri = parse_uri(ruri) if isinstance(ruri, str) else ruri
        self.from_ = from_
        self.to = to
        self.body = bytes(body)
        self.headers = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        self.call_id = call_id or os.urandom(12).hex()
        self.cseq = cseq
        self.max_forwards = max_forwards

    def message(self, our_host: str) -> Message:
        """The request as sent, but for the Via: a From with a new tag, To, Call-ID, CSeq, Max-Forwards."""
        sender = self.from_ or f"sip:{DEFAULT_FROM_USER}@{our_host}"
        headers = [("From", f"{_name_addr(sender)};tag={os.urandom(6).hex()}"),
                   ("To", _name_addr(self.to or str(self.ruri))),
                   ("Call-ID", self.call_id),
                   ("CSeq", f"{self.cseq} {self.method}"),
                   ("Max-Forwards", str(self.max_forwards)),
                   *self.headers]
        return Message(self.method, self.ruri.copy(), headers, self.body)

    def __repr__(self) -> str:
        return f"<UacRequest {self.method} {self.ruri}>"


class Originated:
    """The engine's view of a request of ours: no source, no server transaction, nothing to answer."""

    transport = None
    source = None
    _final_sent = False
    _destination = None
    _flow = None

    def __init__(self, message: Message) -> None:
        self.message = message
        self._proxy: Any = None

    def __repr__(self) -> str:
        return f"<UAC {self.message.method} {self.message.ruri}>"


class Uac(Proxy):
    """A server script's handle for originating requests with one [proxy.NAME] profile."""

    def route(self, request: UacRequest,  # type: ignore[override]
              uri: SipUri | str | None = None) -> "asyncio.Future[Any]":
        """Send `request`; the future resolves to the final Response or a local (status, reason).

        Before this worker's SIP service is up (SystemEvents.on_started) the
        request waits for it.
        """
        if not isinstance(request, UacRequest):
            raise TypeError(f"Uac.route() sends a UacRequest, got {request!r}")
        target = parse_uri(uri) if isinstance(uri, str) else uri
        if _running is not None:   # a bad header raises here, in the caller
            return self.send(_running, request, target)
        try:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        except RuntimeError:
            raise RuntimeError("Uac.route() runs in a worker: in on_request, on_started or a coroutine") from None
        _waiting.append(lambda engine: self.send_later(engine, request, target, future))
        return future

    def send(self, engine: ProxyEngine, request: UacRequest, target: SipUri | None) -> "asyncio.Future[Any]":
        message = request.message(engine.headers.address("udp")[0])
        return engine.originate(self, Originated(message), target)

    def send_later(self, engine: ProxyEngine, request: UacRequest, target: SipUri | None,
                   future: "asyncio.Future[Any]") -> None:
        """Once the SIP service is up: the outcome into the future route() gave; an error too."""
        try:
            outcome = self.send(engine, request, target)
        except Exception as error:
            future.set_exception(error)
            return
        outcome.add_done_callback(lambda done: future.done() or future.set_result(done.result()))


def _name_addr(text: str) -> str:
    return text if "<" in text else f"<{text}>"
