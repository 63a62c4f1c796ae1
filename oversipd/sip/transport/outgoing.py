"""A worker's ways out toward next hops: its UDP sockets per IP family, its TCP and TLS connections, opened once.

The proxy asks `NextHops.source_for(transport, address, server_name)` for
something to send through; responses to what it sends come back on the
same socket or connection and enter the core like any other message.  A
TLS connection is reused per target: its address and the name its server
proved (verify_server checks the chain and that name).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional, Tuple

from ...callbacks import SipEvents
from .listeners import TcpConnection
from .tls import client_context, peer_certificates, run_user_event

TCP_CONNECT_TIMEOUT = 4.0
# transport, address, the name a TLS server must prove (None over TCP)
ConnectionKey = Tuple[str, Tuple[str, int], Optional[str]]


class NextHops:
    """One per worker: the UDP listener of each family, and one connection per next hop."""

    def __init__(self, core: Any, loop: asyncio.AbstractEventLoop, udp: dict[str, Any],
                 spawn: Callable[[Any], None]) -> None:
        self.core = core              # what a TcpConnection reads received messages into
        self.loop = loop
        self.spawn = spawn            # runs a coroutine as one of the core's tasks
        self.udp_by_family = _by_family(udp)   # 4 or 6 -> the first UDP listener of that family
        self.connections: set[TcpConnection] = set()   # what TcpConnection expects of its "server"
        self.tcp: dict[ConnectionKey, TcpConnection] = {}
        self.connecting: dict[ConnectionKey, asyncio.Future[TcpConnection]] = {}
        self.tls_context: Any = None  # made at the first TLS connection

    async def source_for(self, transport: str, address: tuple[str, int], server_name: str | None = None,
                         tls_event: bool = False) -> Any:
        """`tls_event`: run SipEvents.on_server_tls_handshake on a new TLS connection."""
        if transport == "udp":
            return self.udp_listener(address[0])
        if transport == "tcp":
            return await self.connection(("tcp", address, None), False)
        if transport == "tls":
            return await self.connection(("tls", address, server_name or address[0]), tls_event)
        raise OSError(f"transport {transport} is not supported")

    def udp_listener(self, ip: str) -> Any:
        family = _family(ip)
        listener = self.udp_by_family.get(family)
        if listener is None:
            raise OSError(f"no UDP SIP listener of IPv{family}")
        return listener

    async def connection(self, key: ConnectionKey, tls_event: bool) -> TcpConnection:
        """The worker's connection for `key`, opened once and reused; responses come back on it."""
        connection = self.tcp.get(key)
        if connection is not None and connection.channel is not None and not connection.channel.is_closing():
            return connection
        pending = self.connecting.get(key)
        if pending is None:
            pending = self.connecting[key] = self.loop.create_future()
            self.spawn(self.connect(key, pending, tls_event))
        return await asyncio.shield(pending)

    async def connect(self, key: ConnectionKey, pending: "asyncio.Future[TcpConnection]", tls_event: bool) -> None:
        transport, address, server_name = key
        try:
            connection = await asyncio.wait_for(self.open(key), TCP_CONNECT_TIMEOUT)
            if tls_event and not await self.server_handshake_event(connection):
                raise OSError("closed by SipEvents.on_server_tls_handshake")
        except (OSError, asyncio.TimeoutError) as error:
            name = f" ({server_name})" if server_name else ""
            pending.set_exception(OSError(f"{transport.upper()} connect to {address[0]}:{address[1]}{name}: "
                                          f"{error or 'timeout'}"))
            pending.exception()   # retrieved: nobody may be waiting any more
        else:
            self.tcp[key] = connection
            pending.set_result(connection)
        finally:
            self.connecting.pop(key, None)

    async def open(self, key: ConnectionKey) -> TcpConnection:
        transport, address, server_name = key
        if transport == "tcp":
            _, plain = await self.loop.create_connection(lambda: OutgoingConnection(self, key), *address)
            return plain
        if self.tls_context is None:
            self.tls_context = client_context(self.core.settings.tls)
        _, secure = await self.loop.create_connection(
            lambda: OutgoingTlsConnection(self, key), *address, ssl=self.tls_context,
            server_hostname=server_name, ssl_handshake_timeout=self.core.settings.tls.handshake_timeout)
        return secure

    async def server_handshake_event(self, connection: TcpConnection) -> bool:
        """SipEvents.on_server_tls_handshake; False when it closed (or refused) the connection."""
        handler = SipEvents.server_tls_handler
        if handler is None or connection.channel is None:
            return True
        certificates = peer_certificates(connection.channel)
        await run_user_event("SipEvents.on_server_tls_handshake", handler, connection, certificates)
        return connection.channel is not None and not connection.channel.is_closing()

    def close(self) -> None:
        for connection in list(self.tcp.values()):
            connection.abort()


class OutgoingConnection(TcpConnection):
    """A TCP connection the proxy opened: framed and read like an accepted one."""

    def __init__(self, hops: NextHops, key: ConnectionKey) -> None:
        super().__init__(hops)   # type: ignore[arg-type]   # NextHops has core, loop, connections
        self.hops = hops
        self.key = key

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.hops.tcp.get(self.key) is self:
            del self.hops.tcp[self.key]


class OutgoingTlsConnection(OutgoingConnection):
    """A TLS connection the proxy opened (sips:, transport=tls)."""

    transport_kind = "tls"


class AnotherWorkersNextHop:
    """Where a response came in that another worker read from one of its next-hop connections.

    A connection we open is read by the worker that opened it; a peer may
    answer a request of ours over another worker's connection to it (a SIPp
    UAS does, for the calls of its first connection).  Passed on to us by its
    branch, the response needs no way back: nothing is sent through this.
    """

    transport = "tcp"
    reliable = True
    flow = None

    def send(self, data: bytes, address: Any) -> bool:
        return False


ANOTHER_WORKERS_NEXT_HOP = AnotherWorkersNextHop()


def _family(ip: str) -> int:
    """4 or 6: an IP address (a resolver's target), never a name, so a colon tells."""
    return 6 if ":" in ip else 4


def _by_family(udp: dict[str, Any]) -> dict[int, Any]:
    found: dict[int, Any] = {}
    for listener in udp.values():
        found.setdefault(_family(listener.sock.getsockname()[0]), listener)
    return found
