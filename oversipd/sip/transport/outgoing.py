"""A worker's ways out toward next hops: its UDP sockets per IP family, its TCP connections, opened once.

The proxy asks `NextHops.source_for(transport, ip, port)` for something to
send through; responses to what it sends come back on the same socket or
connection and enter the core like any other message.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from .listeners import TcpConnection

TCP_CONNECT_TIMEOUT = 4.0


class NextHops:
    """One per worker: the UDP listener of each family, and one TCP connection per next-hop address."""

    def __init__(self, core: Any, loop: asyncio.AbstractEventLoop, udp: dict[str, Any],
                 spawn: Callable[[Any], None]) -> None:
        self.core = core              # what a TcpConnection reads received messages into
        self.loop = loop
        self.spawn = spawn            # runs a coroutine as one of the core's tasks
        self.udp_by_family = _by_family(udp)   # 4 or 6 -> the first UDP listener of that family
        self.connections: set[TcpConnection] = set()   # what TcpConnection expects of its "server"
        self.tcp: dict[tuple[str, int], TcpConnection] = {}
        self.connecting: dict[tuple[str, int], asyncio.Future[TcpConnection]] = {}

    async def source_for(self, transport: str, address: tuple[str, int]) -> Any:
        if transport == "udp":
            return self.udp_listener(address[0])
        if transport != "tcp":
            raise OSError(f"transport {transport} is not supported")
        return await self.tcp_connection(address)

    def udp_listener(self, ip: str) -> Any:
        family = _family(ip)
        listener = self.udp_by_family.get(family)
        if listener is None:
            raise OSError(f"no UDP SIP listener of IPv{family}")
        return listener

    async def tcp_connection(self, address: tuple[str, int]) -> TcpConnection:
        """The worker's connection to `address`, opened once and reused; responses come back on it."""
        connection = self.tcp.get(address)
        if connection is not None and connection.channel is not None and not connection.channel.is_closing():
            return connection
        pending = self.connecting.get(address)
        if pending is None:
            pending = self.connecting[address] = self.loop.create_future()
            self.spawn(self.connect(address, pending))
        return await asyncio.shield(pending)

    async def connect(self, address: tuple[str, int], pending: "asyncio.Future[TcpConnection]") -> None:
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(lambda: OutgoingConnection(self, address), *address),
                TCP_CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as error:
            pending.set_exception(OSError(f"TCP connect to {address[0]}:{address[1]}: {error or 'timeout'}"))
            pending.exception()   # retrieved: nobody may be waiting any more
        else:
            self.tcp[address] = connection
            pending.set_result(connection)
        finally:
            self.connecting.pop(address, None)

    def close(self) -> None:
        for connection in list(self.tcp.values()):
            connection.abort()


class OutgoingConnection(TcpConnection):
    """A TCP connection the proxy opened: framed and read like an accepted one."""

    def __init__(self, hops: NextHops, address: tuple[str, int]) -> None:
        super().__init__(hops)   # type: ignore[arg-type]   # NextHops has core, loop, connections
        self.hops = hops
        self.address = address

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.hops.tcp.get(self.address) is self:
            del self.hops.tcp[self.address]


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
