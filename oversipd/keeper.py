"""The master's side of kept client connections (kept.py): what its workers keep, release, orphan and hand over."""

from __future__ import annotations

import socket
from typing import Any, Hashable

from . import control
from .kept import KeptDescriptors
from .logger import Logger
from .slots import SlotState, WorkerSlot


class ConnectionKeeper(Logger):
    """Applies the workers' KEEP, RELEASE and HAND_OVER messages and the slots' deaths and respawns to the kept descriptors."""

    log_id = "Master"

    def __init__(self) -> None:
        self.descriptors = KeptDescriptors()

    def keep_connection(self, slot: WorkerSlot, key: Any, sock: socket.socket | None) -> None:
        """A worker's duplicate of a client connection; none came if we are out of descriptors."""
        if sock is not None:
            self.descriptors.keep(slot.pid, key, sock)
        elif not self.descriptors.warned_full:
            self.descriptors.warned_full = True
            self.log_system_warn("out of file descriptors: a client connection is not kept, and will not "
                                 "outlive its worker (raise LimitNOFILE)")

    def release_connection(self, slot: WorkerSlot, key: Hashable) -> None:
        """The worker closed a kept connection: close our duplicate, so the peer sees it end."""
        self.descriptors.release(slot.pid, key)

    def hand_over_connection(self, slot: WorkerSlot, successor: WorkerSlot | None, key: Any, unread: bytes) -> None:
        """A retiring worker's kept connection goes to `successor`, its slot's worker of the serving generation."""
        if successor is None or successor is slot or not successor.alive or successor.channel is None \
                or successor.state is SlotState.STOPPING:
            self.descriptors.release(slot.pid, key)   # it ends when the retiring worker exits
            return
        sock = self.descriptors.transfer(slot.pid, key, successor.pid)
        if sock is not None and not successor.channel.send(control.ADOPT, (key, unread), fd=sock.fileno()):
            self.descriptors.release(successor.pid, key)

    def orphan_connections(self, slot: WorkerSlot) -> None:
        """The worker of `slot` died: what it kept waits for the slot's next worker."""
        self.descriptors.orphan(slot.pid, slot.slot_id)

    def release_orphans(self, slot_id: int) -> None:
        """No worker of `slot_id` will be respawned: the peers of what it kept see the connection end."""
        self.descriptors.release_orphans(slot_id)

    def adoptable(self, slot_id: int) -> dict[Hashable, socket.socket]:
        """What the next worker of `slot_id` adopts across its fork."""
        return self.descriptors.orphans_of(slot_id)

    def give_orphans(self, slot_id: int, pid: int) -> None:
        """After the fork of the slot's new worker `pid`, which adopted them."""
        self.descriptors.hand_orphans(slot_id, pid)

    def filenos(self) -> list[int]:
        return self.descriptors.filenos()
