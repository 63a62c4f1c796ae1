"""SIP over UDP and TCP in a worker: sockets in, messages to the core, responses out.

UDP: the worker reads its slot's socket (oversipd.sip.transport.sockets) with
`add_reader` and a `recvfrom` loop, one datagram one message, and sends
responses from that same socket.  TCP: every worker accepts on the
shared listening socket; a connection and all its messages stay with the
worker that accepted it (and with the worker respawned in its slot: an
accepted connection is a flow, oversipd.sip.transport.flows).
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
import time
from typing import Any, Protocol

from ... import kept
from ...logger import Logger
from .. import counters as C
from ..syntax.errors import FramingError, ParseError
from . import stun
from .flows import kept_key
from ..syntax.framing import KEEPALIVE, StreamFramer
from ..syntax.message import Request as Message, parse_message

# Datagrams read per wake-up before the loop looks at its other work.
UDP_BATCH = 64
# A peer that does not read its responses: stop reading its requests.
TCP_HIGH_WATER = 256 * 1024
CRLF = b"\r\n"
KEEPALIVE_FIRST = (b"\r", b"\n")
# A datagram whose first byte is below this is no SIP message: CRLF, STUN (00 or 01), or nothing.
NOT_SIP_BELOW = b" "
MAX_DATAGRAM = 65536
# Linux's SO_TIMESTAMPNS (also the ancillary message's type), which Python's socket module
# does not name: each datagram's arrival time as a struct timespec.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@ll")
TIMESTAMP_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
QUEUED = struct.Struct("@i")
QUEUED_BUFFER = bytes(QUEUED.size)
# Requests within one second that make a client's connection a trunk (issue 23).
# A phone or a browser sends a few a minute, a busy one a few a second; a
# trunk from an SBC or a PBX carries its callers' hundreds or thousands.
TRUNK_RATE = 50
# A UDP socket marks at most this many source addresses as trunks: a flood
# from spoofed addresses must not grow a worker's memory without bound.
MAX_UDP_TRUNKS = 1024

_log = Logger("SIP")


class Source(Protocol):
    """Where a message came in: a UDP listener's socket or a TCP connection."""

    transport: str          # "udp" or "tcp"
    reliable: bool
    flow: tuple[int, int] | None   # a client's connection: (slot, flow id) (oversipd.sip.transport.flows)

    def send(self, data: bytes, address: Any) -> bool: ...


class UdpTrunks:
    """The source addresses of one UDP socket that carry a trunk's load: TRUNK_RATE requests within a second.

    A UDP trunk (an SBC, a PBX, a carrier sending from one address) meets
    the problem a TCP trunk did (issue 23): the reuseport group hands one
    source address to one slot, so all its calls ran on one core.  Sticky for
    the worker's life, as a connection's mark is for the connection's.
    """

    def __init__(self) -> None:
        self.trunks: set[Any] = set()
        self.counted: dict[Any, int] = {}   # requests per address in the second that began at counting_since
        self.counting_since = 0.0

    def is_trunk(self, address: Any, now: float) -> bool:
        if address in self.trunks:
            return True
        if now - self.counting_since >= 1.0:
            self.counting_since, self.counted = now, {}
        counted = self.counted[address] = self.counted.get(address, 0) + 1
        if counted < TRUNK_RATE or len(self.trunks) >= MAX_UDP_TRUNKS:
            return False
        self.trunks.add(address)
        _log.log_system_info(f"UDP from {address[0]}:{address[1]} carries {TRUNK_RATE}+ requests a second: "
                             "a trunk, its requests now spread over the workers by Call-ID")
        return True


class UdpListener:
    """One UDP SIP socket of this worker's slot."""

    transport = "udp"
    flow = None   # a datagram belongs to no connection
    reliable = False

    def __init__(self, name: str, sock: socket.socket, core: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.sock = sock
        self.core = core
        self.loop = loop
        # One byte more than the largest message: a larger datagram is seen as
        # such.  Never more than a datagram can carry: recvfrom allocates it.
        self.read_size = min(core.settings.max_message_size + 1, MAX_DATAGRAM)
        self.trunks = UdpTrunks()
        # The kernel stamps each datagram's arrival: the age of what waits tells a worker that is behind.
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def is_trunk(self, address: Any, now: float) -> bool:
        return self.trunks.is_trunk(address, now)

    def start_reading(self) -> None:
        """Read from now on (what came meanwhile waits in the socket's buffer)."""
        self.loop.add_reader(self.sock.fileno(), self.on_readable)

    def on_readable(self) -> None:
        recvfrom = self.sock.recvfrom
        receive = self.core.receive
        size = self.read_size
        for _ in range(UDP_BATCH):
            try:
                data, address = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                self.core.admission.queue_read(self, None)
                return
            except OSError:   # e.g. ECONNREFUSED reported for an earlier sendto: nothing to read
                continue
            if len(data) >= size:
                self.core.counts[C.RECEIVED] += 1
                self.core.counts[C.DROPPED] += 1   # larger than max_message_size
                continue
            if data[:1] < NOT_SIP_BELOW:   # one comparison on the SIP path: a SIP message starts with a letter
                self.not_sip(data, address)
                continue
            receive(data, self, address)
        # A whole batch: how long has the next one waited?  The worker may be behind (admission control).
        self.core.admission.queue_read(self, self.head_waited())

    def head_waited(self) -> float | None:
        """Seconds the next datagram has waited in the socket's queue (its kernel timestamp); None: none waits."""
        try:   # non-blocking; leaves the datagram queued
            _, ancillary, _, _ = self.sock.recvmsg(1, TIMESTAMP_SPACE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:   # an error queued for an earlier sendto: something is there, of no age
            return 0.0
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = TIMESPEC.unpack_from(data)
                return time.time() - seconds - nanoseconds / 1e9
        return 0.0

    def not_sip(self, data: bytes, address: Any) -> None:
        """A keep-alive (RFC 5626 §4.4): CRLFs are ignored, a STUN Binding request answered."""
        if data[:1] in KEEPALIVE_FIRST:
            if data.strip():
                self.core.receive(data, self, address)   # CRLFs before a start line (RFC 3261 §7.5)
            return
        answer = stun.binding_response(data, address)
        if answer is None:
            self.core.counts[C.RECEIVED] += 1
            self.core.counts[C.DROPPED] += 1   # neither SIP nor a STUN Binding request
        else:
            self.send(answer, address)

    def send(self, data: bytes, address: Any) -> bool:
        try:
            self.sock.sendto(data, address)
            return True
        except OSError:
            return False

    def stop_reading(self) -> None:
        self.loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self.stop_reading()


class TcpConnection(asyncio.Protocol):
    """One accepted connection: framed by Content-Length, idle after tcp_idle_timeout."""

    transport_kind = "tcp"
    reliable = True
    flow_id: int | None = None   # an accepted connection's flow (oversipd.sip.transport.flows); ours have none
    flow: tuple[int, int] | None = None
    # A plain TCP connection's descriptor can be kept by the master across its
    # worker's death (oversipd.kept); a TLS session or a WebSocket's state
    # lives in the worker and dies with it.
    kept_by_master = True
    fd = -1                            # the socket's descriptor: what the kernel still holds (FIONREAD)
    backlog_at: float | None = None    # the last read that left bytes in the kernel: when, and its size
    backlog_read = 0

    def __init__(self, server: "TcpListener") -> None:
        self.server = server
        self.core = server.core
        self.framer = StreamFramer(self.core.settings.max_message_size)
        self.channel: asyncio.Transport | None = None
        self.peer: Any = None
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.asserted_user: Any = None   # the user authenticated over it (oversipd.sip.user_assertion)
        self.cvars: dict[str, Any] = {}   # the user's, seen by requests as request.connection.cvars

    # The Source protocol of the core calls the transport name `transport`;
    # asyncio's Protocol has no attribute of that name, so it is free here.
    @property
    def transport(self) -> str:  # type: ignore[override]
        return self.transport_kind

    @property
    def remote_ip(self) -> str:
        return self.peer[0] if self.peer else ""

    @property
    def remote_port(self) -> int:
        return self.peer[1] if self.peer else 0

    def close(self) -> None:
        """The user's (SIP.md §12): end this connection."""
        self.abort()

    def connection_made(self, channel: asyncio.BaseTransport) -> None:
        self.channel = channel  # type: ignore[assignment]
        self.peer = channel.get_extra_info("peername")
        sock = channel.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
        self.server.connections.add(self)
        self.last_activity = self.server.loop.time()
        self.arm_idle_timer(self.core.settings.tcp_idle_timeout)

    def data_received(self, data: bytes) -> None:
        self.last_activity = now = self.server.loop.time()
        self.note_backlog(len(data), now)
        try:
            items = self.framer.feed(data)
        except FramingError as error:
            self.refuse_stream(error)
            return
        for item in items:
            if self.channel is None or self.channel.is_closing():
                return
            if item is KEEPALIVE:
                self.channel.write(CRLF)   # RFC 5626 §4.4.1: a CRLF pong
            else:
                self.core.receive(item, self, self.peer)
        if self.backlog_at is None:   # nothing was left in the kernel: this connection is caught up
            self.core.admission.queue_read(self, None)

    def note_backlog(self, read: int, now: float) -> None:
        """Admission control: how long what this read brought, and what still waits, will have waited."""
        queued = bytes_queued(self.fd)
        waited = stream_queue_age(read, queued, self.backlog_at, self.backlog_read, now)
        self.backlog_at, self.backlog_read = (now, read) if queued else (None, 0)
        if waited is not None:   # None: the last read left nothing queued, so this one is not marked behind
            self.core.admission.queue_read(self, waited)

    def refuse_stream(self, error: FramingError) -> None:
        """SIP.md §11: 400 or 513 when the header block names a request we can answer; then close."""
        self.core.counts[C.RECEIVED] += 1
        head = self.framer.pending()
        end = head.find(b"\r\n\r\n")
        request = None
        if end >= 0:
            try:
                request = parse_message(head[:end + 4])   # the body is missing: ParseError with the request
            except ParseError as failure:
                request = failure.request
            except Exception:
                request = None
        if isinstance(request, Message) and request.method != "ACK":
            try:
                response = request.make_response(error.status, error.reason, to_tag=self.core.new_tag())
                self.core.send(self, self.peer, response.to_bytes(), error.status)
            except Exception:
                self.core.counts[C.DROPPED] += 1
        else:
            self.core.counts[C.DROPPED] += 1
        self.abort()

    def send(self, data: bytes, address: Any) -> bool:
        channel = self.channel
        if channel is None or channel.is_closing():
            return False
        channel.write(data)
        return True

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.pause_reading()
            # Not read while paused: its queue says nothing of the worker's (a peer that stops
            # reading our responses must not keep the worker shedding everyone's requests).
            self.backlog_at = None
            self.core.admission.source_gone(self)

    def resume_writing(self) -> None:
        if self.channel is not None and not self.channel.is_closing():
            self.channel.resume_reading()

    def arm_idle_timer(self, delay: float) -> None:
        self.idle_timer = self.server.loop.call_later(delay, self.check_idle)

    def check_idle(self) -> None:
        # Re-armed for the remaining time rather than on every message: an
        # active connection costs one float store per read, not a timer.
        timeout = self.core.settings.tcp_idle_timeout
        silent = self.server.loop.time() - self.last_activity
        if silent >= timeout:
            self.abort()
        else:
            self.arm_idle_timer(timeout - silent)

    def abort(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.server.connections.discard(self)
        self.core.admission.source_gone(self)
        self.channel = None


def stream_queue_age(read: int, queued: int, previous_at: float | None, previous_read: int,
                     now: float) -> float | None:
    """How long the bytes of a connection not handled yet will have waited once handled; None: caught up.

    A stream carries no arrival stamps (Linux's TCP timestamps on loopback
    are the read's own time), so the age is estimated from the pace of the
    reads: when the previous read (`previous_read` bytes at `previous_at`)
    also left bytes in the kernel, the worker was busy all along and took
    `now - previous_at` to get through them; what it has now — `read` just
    read and `queued` still in the kernel — takes as long per byte.
    """
    if previous_at is None:
        return None
    return (read + queued) * (now - previous_at) / max(previous_read, 1)


def bytes_queued(fd: int) -> int:
    """What the kernel holds for a connection, not read yet; 0 when it cannot say."""
    try:
        return QUEUED.unpack(fcntl.ioctl(fd, termios.FIONREAD, QUEUED_BUFFER))[0]
    except (OSError, ValueError):
        return 0


class AcceptedConnection(TcpConnection):
    """A connection a client opened to us: a flow, reachable from every worker while it lasts."""

    trunk = False       # it carried TRUNK_RATE requests within a second once: it stays a trunk
    counted = 0         # requests in the second that began at `counting_since`
    counting_since = 0.0

    def is_trunk(self, address: Any, now: float) -> bool:
        """Whether this connection carries the load of many callers (an SBC, a PBX): counted per request."""
        if self.trunk:
            return True
        if now - self.counting_since >= 1.0:
            self.counting_since, self.counted = now, 0
        self.counted += 1
        if self.counted >= TRUNK_RATE:
            self.trunk = True
            _log.log_system_info(f"the connection from {self.peer} carries {TRUNK_RATE}+ requests a second: "
                                 "a trunk, its requests now spread over the workers by Call-ID")
        return self.trunk

    def __init__(self, server: "TcpListener", flow_id: int | None = None, unread: bytes = b"") -> None:
        super().__init__(server)
        self.flow_id = flow_id   # given when adopted from this slot's previous worker
        self.unread = unread     # what that worker had read but not framed yet
        self.left_open = False   # handed over, or left to this slot's next worker: closing ours must not end it
        self.server: TcpListener = server
        self.admitted = False    # counted in the worker's connections (SIP.md §15 max_connections)

    def connection_made(self, channel: asyncio.BaseTransport) -> None:
        # A new connection beyond max_connections is closed at once; one adopted
        # from this slot's previous worker (flow_id given) is already ours.
        if not self.core.admission.admit_connection(adopted=self.flow_id is not None):
            self.core.counts[C.CONN_REFUSED] += 1
            channel.abort()  # type: ignore[attr-defined]
            return
        self.admitted = True
        super().connection_made(channel)
        self.flow_id = self.server.flows.opened(self)
        self.flow = (self.server.flows.slot_id, self.flow_id)
        if self.unread:   # before the socket is read: the stream stays in order
            unread, self.unread = self.unread, b""
            self.data_received(unread)

    def hand_over(self) -> None:
        """A new generation serves: it reads this connection from now on (oversipd.kept)."""
        if not self.kept_by_master:
            return   # its session is ours: it goes on here until the worker retires
        if self.channel is None or self.channel.is_closing() or self.flow_id is None:
            return
        self.channel.pause_reading()
        if kept.hand_over(kept_key(self.server.name, self.flow_id), self.framer.pending()):
            # We still write what is ours to answer; we no longer read, and
            # closing our descriptor later must not end the connection.
            self.left_open = True
            if self.idle_timer is not None:
                self.idle_timer.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.core.admission.connection_ended()
        if self.flow_id is not None:
            sock = None if self.left_open or self.channel is None or not self.kept_by_master \
                else self.channel.get_extra_info("socket")
            self.server.flows.closed(self.flow_id, sock, release=not self.left_open)
        super().connection_lost(exc)


class TcpListener:
    """One stream SIP listener (tcp, tls, ws, wss) in this worker: its slot's listening socket for tcp
    (transport/sockets.py), the shared one for the others."""

    def __init__(self, name: str, sock: socket.socket, core: Any, loop: asyncio.AbstractEventLoop,
                 flows: Any, connection_class: type[AcceptedConnection] = AcceptedConnection,
                 ssl_context: Any = None) -> None:
        self.name = name
        self.sock = sock
        self.core = core
        self.loop = loop
        self.flows = flows   # this worker's FlowTable
        self.connection_class = connection_class
        self.ssl_context = ssl_context   # tls and wss: the handshake is asyncio's
        self.connections: set[AcceptedConnection] = set()
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task] = set()   # the user's connection events in progress

    async def start(self) -> None:
        if self.ssl_context is None:
            self.server = await self.loop.create_server(lambda: self.connection_class(self), sock=self.sock)
        else:
            self.server = await self.loop.create_server(
                lambda: self.connection_class(self), sock=self.sock, ssl=self.ssl_context,
                ssl_handshake_timeout=self.core.settings.tls.handshake_timeout)

    def spawn(self, coroutine: Any) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def adopt(self, sock: socket.socket, flow_id: int, unread: bytes = b"") -> None:
        """A connection this slot's previous worker accepted, kept open by the master."""
        await self.loop.connect_accepted_socket(lambda: AcceptedConnection(self, flow_id, unread), sock=sock)

    def hand_over(self) -> None:
        for connection in list(self.connections):
            connection.hand_over()

    def stop_reading(self) -> None:
        """No new connection is accepted here; those accepted go on."""
        if self.server is not None:
            self.server.close()

    def close(self) -> None:
        """The worker stops: the clients' connections are left to the master (oversipd.kept).

        It knows what comes next: a respawn of this slot adopts them, else it
        closes its duplicates and they end as this process exits.
        """
        self.stop_reading()
        for connection in list(self.connections):
            connection.left_open = connection.kept_by_master
            connection.abort()
