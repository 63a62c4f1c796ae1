"""Per-slot sockets for the SIP listeners: transaction affinity over UDP, spread connections over TCP.

For each UDP and TCP SIP listener the master holds one `SO_REUSEPORT`
socket per worker slot, all bound to the listener's address: slot 1 uses
the `[listen.NAME]` socket itself, every other slot a socket of its own made
before its first fork.  Worker K reads, sends and accepts only through slot
K's sockets.  Linux hands a datagram, or a new connection, to one socket of
a reuseport group by a hash of its 4-tuple:
* UDP: every retransmission and ACK from one source address lands on the
  slot that holds its transaction (a trunk's address: on the slot that
  reads it, which passes each request on by Call-ID, proxy/places.py);
* TCP: connections spread over the workers by that hash, where one shared
  listening socket let whichever worker woke first take them (issue 23).

The master keeps every slot's socket across respawns: a worker that dies
leaves its socket in the group, what arrives meanwhile queues in it
(datagrams, or connections in its accept queue), and the replacement reads
it.  Adding a slot (SIGTTIN) changes the group's size and re-maps most
flows; removing one (SIGTTOU) closes its sockets once its worker has
exited, dropping what was queued there (datagrams; connections not yet
accepted are reset).  A connection once accepted stays with its worker
(and its slot, oversipd.kept): nothing here moves it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from ... import listeners, reexec
from ...addresses import ListenSettings
from ...logger import Logger
from ..settings import SipSettings

# Asked for each UDP SIP socket; the kernel caps it at net.core.rmem_max
# (SO_RCVBUFFORCE, as root, goes past it).  A full buffer is a cliff:
# datagrams are lost, clients retransmit, and throughput collapses.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
FIRST_SLOT = 1

_log = Logger("SIP")


@dataclass
class SlotGroup:
    """The reuseport group of one UDP or TCP SIP listener: slot -> socket."""

    spec: ListenSettings
    shared: socket.socket                     # the [listen.NAME] socket (slot 1's)
    by_slot: dict[int, socket.socket] = field(default_factory=dict)
    reuseport: bool = True                    # False: systemd's socket, shared by every slot

    def socket_for(self, slot_id: int) -> socket.socket:
        return self.by_slot.get(slot_id, self.shared)


_groups: dict[str, SlotGroup] = {}


PER_SLOT_SCHEMES = ("udp", "tcp")


def per_slot_listeners(settings: SipSettings | None, listen: dict[str, ListenSettings]) -> set[str]:
    """The [listen.*] names whose sockets need SO_REUSEPORT (UDP and TCP carrying SIP)."""
    if settings is None:
        return set()
    return {name for name in settings.listen if listen[name].scheme in PER_SLOT_SCHEMES}


def set_receive_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, UDP_RECEIVE_BUFFER)
    except (OSError, AttributeError):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        except OSError:
            pass


def open_groups(settings: SipSettings | None, listen: dict[str, ListenSettings],
                sockets: dict[str, socket.socket]) -> None:
    """In the master, after the [listen.*] sockets are bound: one group per UDP or TCP SIP listener."""
    for name in sorted(per_slot_listeners(settings, listen)):
        sock = sockets[name]
        if sock.type == socket.SOCK_DGRAM:
            set_receive_buffer(sock)
        reuseport = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        if not reuseport:
            consequence = ("every worker reads the one socket; a transaction's messages may reach another "
                           "worker" if sock.type == socket.SOCK_DGRAM else
                           "every worker accepts on the one socket, whichever the kernel wakes")
            _log.log_system_warn(f"listen.{name}: the socket has no SO_REUSEPORT (passed by systemd?): "
                                 f"{consequence}")
        _groups[name] = SlotGroup(listen[name], sock, {FIRST_SLOT: sock}, reuseport)


def ensure_slot(slot_id: int) -> None:
    """In the master, before forking slot `slot_id`'s worker: its socket in every group."""
    for name, group in _groups.items():
        if slot_id in group.by_slot or not group.reuseport:
            continue
        try:
            group.by_slot[slot_id] = _bind_like(group.shared, group.spec.backlog)
        except OSError as error:
            _log.log_system_error(f"listen.{name}: cannot open the socket of worker slot {slot_id} "
                                  f"({error.strerror or error}); that worker uses the shared socket")


def release_slot(slot_id: int) -> None:
    """In the master, once a removed slot's worker has exited: close its sockets."""
    for group in _groups.values():
        sock = group.by_slot.get(slot_id)
        if sock is not None and sock is not group.shared:
            del group.by_slot[slot_id]
            sock.close()


def slot_sockets(slot_id: int) -> dict[str, socket.socket]:
    """In a worker: listener name -> the socket this slot reads and sends through (UDP) or accepts on (TCP)."""
    return {name: group.socket_for(slot_id) for name, group in _groups.items()}


def close_other_slots(slot_id: int) -> None:
    """In a worker: drop its copies of the other slots' sockets (the master keeps them)."""
    for group in _groups.values():
        mine = group.socket_for(slot_id)
        for other, sock in list(group.by_slot.items()):
            if sock is not mine and sock is not group.shared:
                sock.close()
                del group.by_slot[other]


def close_groups() -> None:
    for group in _groups.values():
        for sock in group.by_slot.values():
            if sock is not group.shared:   # listeners.close_listeners() closes that one
                sock.close()
    _groups.clear()


def _bind_like(shared: socket.socket, backlog: int) -> socket.socket:
    """A new reuseport socket on the address `shared` is bound to (port 0 resolved); listening, for TCP."""
    sock = socket.socket(shared.family, shared.type)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if shared.type == socket.SOCK_STREAM:
            # As the [listen] socket has (listeners.py): the connections accepted
            # here inherit it, and their TIME_WAIT must not keep a restart from
            # binding the port again.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if shared.type == socket.SOCK_DGRAM:
            set_receive_buffer(sock)
        sock.bind(shared.getsockname())
        if shared.type == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
        os.set_inheritable(sock.fileno(), False)
    except BaseException:
        sock.close()
        raise
    return sock


# --- across the master's exec on an upgraded core (reexec.py) ---------------------------------

def handover_description() -> tuple[dict[str, dict], list[int]]:
    """Each group's own sockets by slot (slot 1's is the [listen.NAME] socket, handed over by listeners)."""
    description = {name: {"reuseport": group.reuseport,
                          "slots": {str(slot): sock.fileno() for slot, sock in group.by_slot.items()
                                    if sock is not group.shared}}
                   for name, group in _groups.items()}
    return description, [fd for entry in description.values() for fd in entry["slots"].values()]


def adopt_handed_over(description: dict[str, dict]) -> None:
    shared, sections = listeners.master_sockets(), listeners.bound_sections()
    for name, entry in description.items():
        group = SlotGroup(sections[name], shared[name], {FIRST_SLOT: shared[name]}, entry["reuseport"])
        for slot, fd in entry["slots"].items():
            sock = socket.socket(fileno=reexec.adopt_fd(fd))
            sock.setblocking(False)
            group.by_slot[int(slot)] = sock
        _groups[name] = group


# Registered after the listeners' part (this module imports listeners): restored after it.
# The part keeps its first name, "sip_udp", though TCP groups travel in it too:
# a core that hands over and the core that adopts must agree on it.
reexec.register_part("sip_udp", handover_description, adopt_handed_over)
