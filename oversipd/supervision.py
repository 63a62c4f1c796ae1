"""The master's worker slots: spawn, count, stop, retire and respawn (with back-off) the workers of every generation.

Which worker to stop or respawn, and when, is decided by the master
(master.py) as it reaps them; this module keeps the records and does it.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from typing import Any, Callable, Protocol, Sequence

from . import control, kept
from .control import Channel
from .heartbeat import HeartbeatBoard
from .keeper import ConnectionKeeper
from .logger import Logger
from .settings import Settings
from .slots import FIRST_BACKOFF, SlotState, WorkerSlot
from .worker import worker_main


class ReloadAcks(Protocol):
    awaiting_reload: set[int]    # the slots whose on_reload answer a reload waits for


class MasterView(Protocol):
    """What the slots need of the master."""

    settings: Settings
    generation: int
    target_workers: int
    board: HeartbeatBoard
    selector: selectors.BaseSelector
    keeper: ConnectionKeeper
    reloader: ReloadAcks
    sip_sockets: Any
    handled_signals: Sequence[int]

    def masters_fds(self) -> list[int]: ...
    def read_worker_messages(self, slot: WorkerSlot, last_words: bool = False) -> None: ...
    def swapping_code(self) -> bool: ...
    def serving_handed_over(self) -> bool: ...


class Supervisor(Logger):
    """The serving generation's slots, a starting generation's, and the workers on their way out."""

    log_id = "Master"

    def __init__(self, master: MasterView) -> None:
        self.master = master
        self.slots: dict[int, WorkerSlot] = {}       # the serving generation, by slot
        # While a code reload starts a new generation: its workers, by slot.
        self.next_slots: dict[int, WorkerSlot] = {}
        # Workers of a generation on its way out (replaced, or failed to start): never respawned.
        self.leaving: list[WorkerSlot] = []
        self.respawns = 0

    def live_slots(self) -> list[WorkerSlot]:
        """Workers at work (both generations during a swap); not those asked to stop."""
        return [s for s in (*self.slots.values(), *self.next_slots.values())
                if s.alive and s.state is not SlotState.STOPPING]

    def all_slots(self) -> list[WorkerSlot]:
        return [*self.slots.values(), *self.next_slots.values(), *self.leaving]

    def forget_slot(self, slot: WorkerSlot) -> None:
        """Drop a dead worker's record, wherever it is kept."""
        if self.slots.get(slot.slot_id) is slot:
            del self.slots[slot.slot_id]
        elif self.next_slots.get(slot.slot_id) is slot:
            del self.next_slots[slot.slot_id]
        elif slot in self.leaving:
            self.leaving.remove(slot)
        self.release_unused_sip_sockets(slot.slot_id)
        # What it kept waits only for a respawn of this slot (oversipd.kept).
        if not any(s.slot_id == slot.slot_id and s.state is SlotState.WAITING for s in self.all_slots()):
            self.master.keeper.release_orphans(slot.slot_id)

    def manage_workers(self) -> None:
        """Spawn or retire workers until the count matches target_workers."""
        master = self.master
        if master.swapping_code():
            return  # the new generation is forked at the count wanted then; the rest follows the swap
        if master.serving_handed_over():
            return  # its workers run code this master no longer holds: a new generation replaces them
        active = sorted((s for s in self.slots.values() if not s.retiring), key=lambda s: s.slot_id)
        for slot in active[master.target_workers:]:
            self.retire_worker(slot)
        for _ in range(master.target_workers - len(active)):
            slot = WorkerSlot(self.free_slot_id(), master.generation)
            self.slots[slot.slot_id] = slot
            self.spawn_worker(slot)

    def free_slot_id(self) -> int:
        slot_id = 1
        while slot_id in self.slots:
            slot_id += 1
        return slot_id

    def retire_worker(self, slot: WorkerSlot) -> None:
        if not slot.alive:
            self.forget_slot(slot)
            return
        slot.retiring = True
        self.stop_worker(slot, error=False)

    def spawn_worker(self, slot: WorkerSlot) -> bool:
        """Fork the worker of `slot`; False (and a respawn scheduled) when fork fails."""
        master = self.master
        if master.sip_sockets is not None:
            master.sip_sockets.ensure_slot(slot.slot_id)  # its UDP SIP sockets, kept across respawns
        master_end, worker_end = Channel.pair()
        master.board.beat(slot.cell)
        adoptable = master.keeper.adoptable(slot.slot_id)
        adopted = {sock.fileno() for sock in adoptable.values()}
        inherited = [master_end.fileno(), *(fd for fd in master.masters_fds() if fd not in adopted)]
        # Block our signals across the fork: a signal landing in the child
        # before it resets its handlers would wake the master's pipe.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, master.handled_signals)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            master_end.close()
            worker_end.close()
            self.log_system_error(f"cannot fork generation {slot.generation} worker {slot.slot_id}: {error}")
            slot.quick_deaths += 1  # back off as for a worker that died at once
            self.schedule_respawn(slot, max(slot.respawn_delay(), FIRST_BACKOFF))
            return False
        if pid == 0:
            kept.start_in_worker(worker_end, adoptable)
            worker_main(slot.slot_id, worker_end, master.settings, master.board, inherited, slot.generation)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker_end.close()
        slot.forked(pid, master_end)
        master.keeper.give_orphans(slot.slot_id, pid)
        self.register_channel(slot)
        return True

    def register_channel(self, slot: WorkerSlot) -> None:
        """The loop reads what the worker of `slot` says."""
        read_messages: Callable[[WorkerSlot], None] = self.master.read_worker_messages
        self.master.selector.register(slot.channel.sock, selectors.EVENT_READ, lambda: read_messages(slot))

    def unregister_channel(self, slot: WorkerSlot) -> None:
        if slot.channel is not None:
            try:
                self.master.selector.unregister(slot.channel.sock)
            except (KeyError, ValueError):
                pass

    def release_unused_sip_sockets(self, slot_id: int) -> None:
        """A slot's UDP SIP sockets close once no worker of any generation holds that slot (what queued there is lost)."""
        if self.master.sip_sockets is not None and all(s.slot_id != slot_id for s in self.all_slots()):
            self.master.sip_sockets.release_slot(slot_id)

    def stop_worker(self, slot: WorkerSlot, error: bool, retire: bool = False) -> None:
        """Ask a worker to stop (`retire`: a newer generation took over); SIGKILL after graceful_timeout."""
        slot.transition(SlotState.STOPPING, "asked to retire" if retire else "asked to stop")
        slot.stop_deadline = time.monotonic() + self.master.settings.core.graceful_timeout
        self.master.reloader.awaiting_reload.discard(slot.slot_id)
        message = (control.RETIRE, None) if retire else (control.STOP, error)
        if slot.channel is None or not slot.channel.send(*message):
            self.signal_worker(slot, signal.SIGTERM)

    def signal_worker(self, slot: WorkerSlot, signum: int) -> None:
        try:
            os.kill(slot.pid, signum)
        except ProcessLookupError:
            pass  # already dead; SIGCHLD is on its way

    def respawn_worker(self, slot: WorkerSlot, quick: bool) -> str:
        """Fork the replacement now, or after the back-off of a quick death; say which."""
        self.respawns += 1
        delay = slot.respawn_delay() if quick else 0.0
        if delay == 0.0:
            # Fork first: the log line can wait, the slot should not.
            return f"respawned as pid {slot.pid}" if self.spawn_worker(slot) else "fork failed"
        self.schedule_respawn(slot, delay)
        return f"respawning in {delay:g} s ({slot.quick_deaths} quick deaths in a row)"

    def schedule_respawn(self, slot: WorkerSlot, delay: float) -> None:
        slot.respawn_at = time.monotonic() + delay
        slot.transition(SlotState.WAITING, f"respawn in {delay:g} s")

    def respawn_due_workers(self, now: float) -> None:
        """Fork the serving generation's workers whose back-off ended."""
        for slot in list(self.slots.values()):
            if slot.state is SlotState.WAITING and slot.respawn_at is not None and slot.respawn_at <= now:
                self.spawn_worker(slot)
