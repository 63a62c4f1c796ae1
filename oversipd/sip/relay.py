"""Hands a UDP response to the worker that holds its client transaction.

Linux picks the socket of a reuseport group by a hash of the incoming
datagram's 4-tuple, whichever slot sent the request: the responses of a
peer all land on one slot, while requests to it leave from every slot.
The proxy writes its slot number into its Via branch; a worker that reads
a response for another slot passes it on over a datagram socket in the
abstract Unix namespace, named after the master's pid and the slot (no
file to clean up, gone with the process).  A worker respawned in that slot
binds the name again; what arrives in between is lost as any UDP datagram
may be, and the peer's retransmissions cover it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Callable

from ..logger import Logger

RETRY_BIND = 0.5      # seconds: a retiring worker of our slot may still hold the name
MAX_RELAYED = 65536 + 512

_log = Logger("SIP")


def relay_name(master_pid: int, slot_id: int) -> bytes:
    return f"\0oversipd-{master_pid}-sip-slot-{slot_id}".encode()


class SlotRelay:
    """This worker's end: receives what others pass on, passes on what belongs to others."""

    def __init__(self, slot_id: int, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[str, bytes, tuple[str, int]], None]) -> None:
        self.slot_id = slot_id
        self.loop = loop
        self.deliver = deliver            # (listener name, datagram, peer address)
        self.master_pid = os.getppid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.bound = False
        self.retry: asyncio.TimerHandle | None = None
        self.bind()

    def bind(self) -> None:
        self.retry = None
        try:
            self.sock.bind(relay_name(self.master_pid, self.slot_id))
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
            head, _, datagram = data.partition(b"\n")
            try:
                name, ip, port = head.decode().split(" ")
                self.deliver(name, datagram, (ip, int(port)))
            except Exception as error:   # a relayed message must cost itself only
                _log.log_system_error(error)

    def pass_on(self, slot_id: int, listener: str, datagram: bytes, address: tuple) -> bool:
        head = f"{listener} {address[0]} {address[1]}\n".encode()
        try:
            self.sock.sendto(head + datagram, relay_name(self.master_pid, slot_id))
            return True
        except OSError:
            return False   # that slot's worker is gone or respawning: the peer retransmits

    def close(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
        if self.bound:
            self.loop.remove_reader(self.sock.fileno())
            self.bound = False
        self.sock.close()
