"""Descriptors the master keeps for a worker, so that they outlive it.

A worker hands the master a duplicate of a connection it wants to survive
its own death (the SIP flows of RFC 5626: a client behind NAT can be
reached only over the connection it opened).  When that worker dies in an
unexpected way and its slot is respawned, the new worker inherits the
master's duplicates across the fork and adopts them: the connection never
closed, the peer saw nothing.

The rules that keep a connection from being read by two processes or held
open by one that no longer wants it:

* A worker that closes a kept connection tells the master (RELEASE), which
  closes its duplicate: only then does the peer see the connection end.
* Every forked child closes the master's duplicates, except the new worker
  of a slot, which adopts the orphans of that slot (the kept connections of
  its dead predecessor) and nothing else.
* A worker that retires because a new generation serves hands each kept
  connection to its slot's worker of that generation (HAND_OVER; the
  master passes its duplicate on with ADOPT), with the bytes it had read
  but not yet framed; with no such worker, the master closes its duplicate
  and the connection ends when the retiring worker exits.
* A worker that stops closes only its own descriptors: whether it was
  asked to (a stop, TTOU) or stopped alone (a SIGTERM of its own), the
  master decides as it reaps it: a respawn of the slot adopts them, else
  it closes its duplicates and the connections end.
* Duplicates are CLOEXEC: the master's exec into an upgraded core drops
  them, as the new generation it starts replaces every worker anyway.
"""

from __future__ import annotations

import resource
import socket
from typing import Any, Hashable

from . import control
from .control import Channel


# Enough for a large edge proxy; an unbounded limit would make every loop
# over the descriptor range (some libraries close them one by one) crawl.
MAX_OPEN_FILES = 1 << 20


def raise_descriptor_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one: the master holds one descriptor per client connection.

    systemd's default soft limit (1024) is meant for select(); programs that
    need more raise it themselves.  Workers inherit it.  Returns (old, new).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return soft, wanted
    return soft, soft


class KeptDescriptors:
    """The master's side: kept sockets by owner (worker pid), and the orphans of dead owners by slot."""

    def __init__(self) -> None:
        self.owned: dict[int, dict[Hashable, socket.socket]] = {}
        self.orphans: dict[int, dict[Hashable, socket.socket]] = {}
        self.warned_full = False   # a KEEP came without its descriptor (EMFILE): said once

    def keep(self, owner: int, key: Hashable, sock: socket.socket) -> None:
        previous = self.owned.setdefault(owner, {}).pop(key, None)
        if previous is not None:
            previous.close()
        self.owned[owner][key] = sock

    def release(self, owner: int, key: Hashable) -> None:
        sock = self.owned.get(owner, {}).pop(key, None)
        if sock is not None:
            sock.close()

    def orphan(self, owner: int, slot_id: int) -> None:
        """The owner died: the next worker of its slot adopts what it kept, if the slot is respawned."""
        self.orphans.setdefault(slot_id, {}).update(self.owned.pop(owner, {}))

    def release_orphans(self, slot_id: int) -> None:
        for sock in self.orphans.pop(slot_id, {}).values():
            sock.close()

    def hand_orphans(self, slot_id: int, new_owner: int) -> None:
        """After the fork of the slot's new worker, which adopted them."""
        orphans = self.orphans.pop(slot_id, {})
        if orphans:
            self.owned.setdefault(new_owner, {}).update(orphans)

    def transfer(self, owner: int, key: Hashable, new_owner: int) -> socket.socket | None:
        """A retiring owner's connection now belongs to its successor; None if it was not kept."""
        sock = self.owned.get(owner, {}).pop(key, None)
        if sock is not None:
            self.owned.setdefault(new_owner, {})[key] = sock
        return sock

    def orphans_of(self, slot_id: int) -> dict[Hashable, socket.socket]:
        return self.orphans.get(slot_id, {})

    def filenos(self) -> list[int]:
        kept = [*self.owned.values(), *self.orphans.values()]
        return [sock.fileno() for by_key in kept for sock in by_key.values()]


# --- in a worker -------------------------------------------------------------------

_channel: Channel | None = None
_adoptable: dict[Hashable, socket.socket] = {}


def start_in_worker(channel: Channel, adoptable: dict[Hashable, socket.socket]) -> None:
    """Called in the new worker right after the fork: its channel, and its dead predecessor's connections."""
    global _channel, _adoptable
    _channel = channel
    _adoptable = dict(adoptable)


def keep(key: Hashable, sock: Any) -> bool:
    """Hand the master a duplicate of `sock`; False when it could not take it (it then dies with us)."""
    if _channel is None:
        return False
    return _channel.send(control.KEEP, key, fd=sock.fileno())


def release(key: Hashable) -> None:
    if _channel is not None:
        _channel.send(control.RELEASE, key)


def hand_over(key: Hashable, unread: bytes) -> bool:
    """A retiring worker: pass this kept connection on to the successor in its slot."""
    return _channel is not None and _channel.send(control.HAND_OVER, (key, unread))


def adopt() -> dict[Hashable, socket.socket]:
    """The connections this worker inherited from its dead predecessor (once: the caller owns them)."""
    global _adoptable
    adopted, _adoptable = _adoptable, {}
    return adopted
