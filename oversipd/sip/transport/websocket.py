"""SIP over WebSocket (RFC 7118) on ws and wss listeners, with websockets' sans-I/O ServerProtocol.

websockets' protocol object parses the HTTP upgrade and the frames, answers
pings and closes, checks masking, the `sip` sub-protocol, the Origin and
the message size (1009); this module is the thin asyncio adapter around
it: one SIP message per WebSocket message (fragments reassembled here),
the user's WebSocketEvents, our pings, and the handshake deadline.  Like a
TLS session, a WebSocket's state lives in this worker: the connection is a
flow that dies with it (docs/tls-websocket.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.frames import Frame, Opcode
from websockets.http11 import Request as HttpUpgrade
from websockets.protocol import State
from websockets.server import ServerProtocol

from ...callbacks import WebSocketEvents
from .listeners import AcceptedConnection
from .tls import run_user_event, start_after_handshake_event

SUBPROTOCOL = "sip"        # RFC 7118 §4
# websockets logs every frame, SIP content included, at DEBUG (and formats
# it whenever DEBUG is enabled): our log_level = "debug" must not mean that.
_protocol_log = logging.getLogger("oversipd.websocket.frames")
_protocol_log.setLevel(logging.WARNING)   # its INFO says "connection open" for each one
CLOSE_NORMAL = 1000
WS_VERSION = "13"
DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY)


class HttpRequest:
    """The upgrade request as WebSocketEvents.on_connection sees it (SIP.md §12)."""

    def __init__(self, upgrade: HttpUpgrade) -> None:
        self.method = getattr(upgrade, "method", "GET")
        parts = urlsplit(upgrade.path)
        self.path = parts.path
        self.query = dict(parse_qsl(parts.query))
        self.headers = {name.lower(): value for name, value in upgrade.headers.raw_items()}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class WsConnection(AcceptedConnection):
    """A client's WebSocket connection to a ws or wss listener: one SIP message per WebSocket message."""

    kept_by_master = False

    def __init__(self, server: Any, transport_kind: str = "ws") -> None:
        super().__init__(server)
        self.transport_kind = transport_kind
        settings = self.core.settings.websocket
        self.settings = settings
        self.ws = ServerProtocol(subprotocols=[SUBPROTOCOL], origins=list(settings.allowed_origins) or None,
                                 max_size=settings.max_message_size, logger=_protocol_log)
        self.upgraded = False
        self.rejection: tuple[int, str] | None = None   # set by connection.reject()
        self.fragments: list[bytes] = []
        self.closed_by_us = False
        self.deadline: asyncio.TimerHandle | None = None   # the upgrade's, then the pong's
        self.ping_timer: asyncio.TimerHandle | None = None

    # --- life ---------------------------------------------------------------------------

    def connection_made(self, channel: asyncio.BaseTransport) -> None:
        super().connection_made(channel)
        # A slowloris upgrade costs a descriptor until then (tls.handshake_timeout).
        self.deadline = self.server.loop.call_later(self.core.settings.tls.handshake_timeout, self.give_up)
        if self.transport_kind == "wss":
            start_after_handshake_event(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_timers()
        handler = WebSocketEvents.disconnection_handler
        if self.upgraded and handler is not None:
            self.server.spawn(run_user_event("WebSocketEvents.on_disconnection", handler, self,
                                             not self.closed_by_us))
        super().connection_lost(exc)

    def give_up(self) -> None:
        self.deadline = None
        self.abort()

    def abort(self) -> None:
        self.closed_by_us = True
        super().abort()

    def reject(self, status: int, reason: str = "") -> None:
        """The user's, in WebSocketEvents.on_connection: an HTTP error instead of the upgrade."""
        self.rejection = (status, reason or "Forbidden")

    def close(self) -> None:
        """The user's: a WebSocket close (1000), then the connection ends."""
        if self.upgraded and self.ws.state is State.OPEN:
            self.closed_by_us = True
            self.ws.send_close(CLOSE_NORMAL)
            self.flush()
        else:
            self.abort()

    def stop_timers(self) -> None:
        for timer in (self.deadline, self.ping_timer):
            if timer is not None:
                timer.cancel()
        self.deadline = self.ping_timer = None

    # --- bytes in -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.server.loop.time()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, HttpUpgrade):
                self.upgrade_requested(event)
            elif isinstance(event, Frame):
                self.frame_received(event)
        self.flush()

    def upgrade_requested(self, upgrade: HttpUpgrade) -> None:
        handler = WebSocketEvents.connection_handler
        if handler is None:
            self.answer_upgrade(upgrade)
            return
        assert self.channel is not None
        self.channel.pause_reading()

        async def event() -> None:
            if await run_user_event("WebSocketEvents.on_connection", handler, self, HttpRequest(upgrade)):
                self.answer_upgrade(upgrade)
                self.flush()
                if self.channel is not None and not self.channel.is_closing():
                    self.channel.resume_reading()

        self.server.spawn(event())

    def answer_upgrade(self, upgrade: HttpUpgrade) -> None:
        if upgrade.headers.get("Sec-WebSocket-Version") != WS_VERSION:
            # RFC 6455 §4.4: 426 and the version we speak (websockets says 400).
            response = self.ws.reject(426, "Upgrade Required\n")
            response.headers["Sec-WebSocket-Version"] = WS_VERSION
        else:
            response = self.ws.accept(upgrade)
        if response.status_code == 101 and self.rejection is not None:
            response = self.ws.reject(*self.rejection)
        self.ws.send_response(response)
        if response.status_code != 101:
            self.closed_by_us = True
            return
        self.upgraded = True
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.arm_ping()

    def frame_received(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PONG:
            if self.deadline is not None:   # our ping is answered
                self.deadline.cancel()
                self.deadline = None
            return
        if frame.opcode in DATA_OPCODES or frame.opcode is Opcode.CONT:
            if frame.opcode in DATA_OPCODES:
                self.fragments = []
            self.fragments.append(frame.data)
            if frame.fin:
                message, self.fragments = b"".join(self.fragments), []
                if message.strip():   # an empty one, or CRLFs, is a keep-alive: nothing to parse
                    self.core.receive(message, self, self.peer)

    # --- bytes out ------------------------------------------------------------------------

    def send(self, data: bytes, address: Any) -> bool:
        if not self.upgraded or self.ws.state is not State.OPEN or self.channel is None:
            return False
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:   # RFC 7118 §5.2: text frames for UTF-8, binary otherwise
            self.ws.send_binary(data)
        else:
            self.ws.send_text(data)
        self.flush()
        return True

    def flush(self) -> None:
        """Write what the protocol has for the peer; an empty chunk asks for the end of the connection."""
        channel = self.channel
        if channel is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                channel.write(chunk)
            elif not channel.is_closing():
                channel.close()
        if self.ws.state is State.CLOSED and not channel.is_closing():
            channel.close()

    # --- our pings (RFC 6455 §5.5.2): a dead peer is found --------------------------------

    def arm_ping(self) -> None:
        interval = self.settings.ping_interval
        if interval > 0:
            self.ping_timer = self.server.loop.call_later(interval, self.ping)

    def ping(self) -> None:
        self.ping_timer = None
        if self.ws.state is not State.OPEN:
            return
        self.ws.send_ping(b"")
        self.flush()
        if self.deadline is None:
            self.deadline = self.server.loop.call_later(self.settings.pong_timeout, self.give_up)
        self.arm_ping()


def connection_class(transport_kind: str) -> Any:
    """The connection factory of a ws or wss listener (TcpListener calls it with the listener)."""
    return lambda server: WsConnection(server, transport_kind)
