"""Passes SIP messages between the workers of one daemon.

Three kinds travel here, each a datagram with one header line:

* a response for another slot's client transaction (below), from UDP or
  from a flow (a client's TCP connection, oversipd.sip.transport.flows);
* a request to send over a flow that another slot's worker holds;
* the answer that such a flow is gone, for the client transaction's worker.

Why responses need it:

Linux picks the socket of a reuseport group by a hash of the incoming
datagram's 4-tuple, whichever slot sent the request: the responses of a
peer all land on one slot, while requests to it leave from every slot.
The proxy writes its *place* into its Via branch: its slot and the parity
of its generation (`3g0`), since while a code reload swaps generations the
old and the new worker of a slot both hold transactions.  A worker that
reads a response for another place passes it on over a datagram socket in
the abstract Unix namespace, named after the master's pid and the place
(no file to clean up, gone with the process).  A worker respawned in that
slot binds the name again; what arrives in between is lost as any UDP
datagram may be, and the peer's retransmissions cover it.  A retiring
worker keeps its name until it exits: the responses for the transactions
it still holds reach it.

A Unix datagram socket's receive queue holds only net.unix.max_dgram_qlen
datagrams (10 by default), so a burst of responses for a busy slot does not
fit: a non-blocking send then fails with EAGAIN.  Those responses must not
be dropped (the UAS's 200 retransmissions start at T1, when ours of the
INVITE do too, and a UAS may take our retransmitted INVITE for a new one).
So each other slot gets a socket connected to its name, the kernel tells us
when its queue has room again (poll on a connected Unix datagram socket
looks at the peer's queue), and what did not fit waits here, in order.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from typing import Protocol

from ...logger import Logger

KIND_MESSAGE = b"M"   # M listener ip port \n message: receive it as if it had come in there
KIND_FLOW = b"F"      # F flow-id origin-place \n request: send it over that flow of ours
KIND_GONE = b"X"      # X branch method \n: the flow of that request is gone (430)
KIND_AUTH = b"A"      # A ip \n: a failed authentication from that IP (SIP.md §15 auth_failures)
RETRY_BIND = 0.02     # seconds: a retiring worker two generations back may still hold the name
MAX_RELAYED = 65536 + 512
MAX_PENDING = 4096    # datagrams waiting for one place's queue; beyond, that place is stuck: drop

_log = Logger("SIP")


def place_of(slot_id: int, generation: int) -> str:
    """Where a worker is reached: its slot and its generation's parity (two generations run at most)."""
    return f"{slot_id}g{generation % 2}"


def relay_name(master_pid: int, place: str) -> bytes:
    return f"\0oversipd-{master_pid}-sip-{place}".encode()


class Receiver(Protocol):
    """What a worker does with what other workers pass on (the proxy engine)."""

    def relayed(self, listener: str, message: bytes, address: tuple[str, int]) -> None: ...
    def send_on_flow(self, flow_id: int, origin: str, request: bytes) -> None: ...
    def flow_gone(self, branch: str, method: str) -> None: ...
    def auth_failed(self, ip: str) -> None: ...


class SlotRelay:
    """This worker's end: receives what others pass on, passes on what belongs to others."""

    def __init__(self, place: str, loop: asyncio.AbstractEventLoop, receiver: Receiver) -> None:
        self.place = place
        self.loop = loop
        self.receiver = receiver
        self.master_pid = os.getppid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.bound = False
        self.retry: asyncio.TimerHandle | None = None
        self.peers: dict[str, _PeerSlot] = {}   # other places we pass on to: place -> connected socket
        self.bind()

    def bind(self) -> None:
        self.retry = None
        try:
            self.sock.bind(relay_name(self.master_pid, self.place))
        except OSError:
            self.retry = self.loop.call_later(RETRY_BIND, self.bind)
            return
        self.bound = True
        self.loop.add_reader(self.sock.fileno(), self.on_readable)

    def on_readable(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(MAX_RELAYED)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            head, _, payload = data.partition(b"\n")
            try:
                self.dispatch(head[:1], head[2:].decode().split(" "), payload)
            except Exception as error:   # a relayed message must cost itself only
                _log.log_system_error(error)

    def dispatch(self, kind: bytes, fields: list[str], payload: bytes) -> None:
        if kind == KIND_MESSAGE:
            name, ip, port = fields
            self.receiver.relayed(name, payload, (ip, int(port)))
        elif kind == KIND_FLOW:
            flow_id, origin = fields
            self.receiver.send_on_flow(int(flow_id), origin, payload)
        elif kind == KIND_GONE:
            branch, method = fields
            self.receiver.flow_gone(branch, method)
        elif kind == KIND_AUTH:
            self.receiver.auth_failed(fields[0])

    def pass_on(self, place: str, listener: str, message: bytes, address: tuple) -> bool:
        """A message for that place's worker to receive as if it had come in on `listener` from `address`."""
        return self.send(place, KIND_MESSAGE, f"{listener} {address[0]} {address[1]}", message)

    def pass_to_flow(self, place: str, flow_id: int, request: bytes) -> bool:
        """A request for that place's worker to send over its flow `flow_id`."""
        return self.send(place, KIND_FLOW, f"{flow_id} {self.place}", request)

    def backed_up(self, place: str) -> bool:
        """That place's worker is alive but MAX_PENDING datagrams behind: what we pass on waits seconds."""
        peer = self.peers.get(place)
        return peer is not None and peer.full()

    def tell_flow_gone(self, place: str, branch: str, method: str) -> bool:
        return self.send(place, KIND_GONE, f"{branch} {method}", b"")

    def tell_auth_failed(self, place: str, ip: str) -> bool:
        return self.send(place, KIND_AUTH, ip, b"")

    def send(self, place: str, kind: bytes, head: str, payload: bytes) -> bool:
        """Send it to that place, or queue it behind what waits for room there; False: not passed on."""
        data = kind + b" " + head.encode() + b"\n" + payload
        peer = self.peers.get(place)
        if peer is not None and peer.pending:
            return peer.queue(data)      # behind the others: order kept
        for _ in range(2):               # a second try after reconnecting to a respawned worker
            peer = peer or self.connect(place)
            if peer is None:
                return False             # that slot's worker is gone or respawning: the peer retransmits
            try:
                peer.sock.send(data)
                return True
            except (BlockingIOError, InterruptedError):
                return peer.queue(data)  # its queue is full: wait until the kernel says there is room
            except OSError:              # its worker died; a new one may have bound the name since
                self.forget(place)
                peer = None
        return False

    def connect(self, place: str) -> "_PeerSlot | None":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(relay_name(self.master_pid, place))
        except OSError:
            sock.close()
            return None
        peer = self.peers[place] = _PeerSlot(sock, self.loop)
        return peer

    def forget(self, place: str) -> None:
        peer = self.peers.pop(place, None)
        if peer is not None:
            peer.close()

    def close(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
        for place in list(self.peers):
            self.forget(place)
        if self.bound:
            self.loop.remove_reader(self.sock.fileno())
            self.bound = False
        self.sock.close()


class _PeerSlot:
    """Our socket connected to another slot's name, and what waits for room in its queue."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.loop = loop
        self.pending: deque[bytes] = deque()

    def full(self) -> bool:
        return len(self.pending) >= MAX_PENDING

    def queue(self, data: bytes) -> bool:
        if self.full():
            return False
        if not self.pending:
            self.loop.add_writer(self.sock.fileno(), self.flush)
        self.pending.append(data)
        return True

    def flush(self) -> None:
        while self.pending:
            try:
                self.sock.send(self.pending[0])
            except (BlockingIOError, InterruptedError):
                return                   # still full: the kernel wakes us again
            except OSError:              # that worker died: the peers retransmit what it had
                self.pending.clear()
                break
            self.pending.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self.pending:
            self.loop.remove_writer(self.sock.fileno())
            self.pending.clear()
        self.sock.close()
