"""The workers' deadlines: SIGABRT then SIGKILL for a stuck reactor (worker_timeout), SIGKILL after
graceful_timeout, and the systemd watchdog, petted only while every reactor answers its heartbeat."""

from __future__ import annotations

import signal
import time
from typing import Protocol

from .heartbeat import HeartbeatBoard
from .logger import Logger
from .settings import Settings
from .slots import SlotState, WorkerSlot
from .systemd import Notifier

ABORT_GRACE = 1.0  # seconds between SIGABRT (traceback) and SIGKILL for a stuck reactor
# A worker answers its heartbeat while its last beat is younger than this
# many heartbeat intervals; the systemd watchdog is petted only then.
HEARTBEAT_MISSES = 3


class Slots(Protocol):
    def all_slots(self) -> list[WorkerSlot]: ...
    def live_slots(self) -> list[WorkerSlot]: ...
    def signal_worker(self, slot: WorkerSlot, signum: int) -> None: ...


class MasterView(Protocol):
    """What the deadlines need of the master."""

    settings: Settings
    board: HeartbeatBoard
    notifier: Notifier
    workers: Slots

    def swapping_code(self) -> bool: ...


class Watchdog(Logger):
    """When the master must next look at a worker, and what it does then."""

    log_id = "Master"

    def __init__(self, master: MasterView) -> None:
        self.master = master
        self.next_watchdog = time.monotonic() if master.notifier.watchdog_interval else None

    def slot_deadline(self, slot: WorkerSlot) -> float | None:
        """When the master must next look at `slot` (respawn, graceful_timeout, worker_timeout)."""
        if slot.state is SlotState.WAITING:
            # Not while a new generation starts: the master holds its code (see worker_exited).
            return None if self.master.swapping_code() else slot.respawn_at
        if not slot.alive:
            return None
        if slot.state is SlotState.STOPPING:
            return slot.stop_deadline
        if slot.abort_sent_at is not None:
            return slot.abort_sent_at + ABORT_GRACE
        if self.master.settings.core.worker_timeout and not slot.handed_over:
            return self.last_sign_of_life(slot) + self.master.settings.core.worker_timeout
        return None

    def last_sign_of_life(self, slot: WorkerSlot) -> float:
        """Its last heartbeat, but never earlier than the moment its fork returned.

        The master writes the cell just before the fork, so that a new worker
        starts with a fresh one (not its predecessor's); whatever the fork
        itself then takes is not the worker's reactor being stuck.  A fork that
        took longer than worker_timeout made a healthy worker look stuck the
        moment it was born (seed 888800902, docs/RELIABILITY.md).
        """
        return max(self.master.board.last_beat(slot.cell), slot.forked_at)

    def silence(self, slot: WorkerSlot, now: float) -> float:
        """Seconds since the worker of `slot` last gave a sign of life."""
        return now - self.last_sign_of_life(slot)

    def murder_unresponsive_workers(self, now: float) -> None:
        """SIGABRT (faulthandler prints the traceback) a stuck reactor, then SIGKILL it."""
        timeout = self.master.settings.core.worker_timeout
        workers = self.master.workers
        for slot in workers.all_slots():
            if not slot.alive or slot.state is SlotState.STOPPING or slot.handed_over:
                continue
            if slot.abort_sent_at is not None:
                if now >= slot.abort_sent_at + ABORT_GRACE:
                    self.log_system_crit(f"{slot.label} survived SIGABRT; SIGKILL")
                    workers.signal_worker(slot, signal.SIGKILL)
                    slot.abort_sent_at = float("inf")
            elif timeout and (silence := self.silence(slot, now)) >= timeout:
                self.log_system_crit(f"{slot.label}: reactor unresponsive "
                                     f"for {timeout:g} s (worker_timeout); sending SIGABRT "
                                     f"(last heartbeat {silence:.3f} s ago)")
                workers.signal_worker(slot, signal.SIGABRT)
                slot.abort_sent_at = now

    def kill_overdue_stopping_workers(self, now: float) -> None:
        """graceful_timeout after a worker was asked to stop (daemon stop, TTOU, fewer `workers`): SIGKILL."""
        workers = self.master.workers
        for slot in workers.all_slots():
            if slot.alive and slot.stop_deadline is not None and now >= slot.stop_deadline:
                self.log_system_warn(f"{slot.label} still running after "
                                     "graceful_timeout; SIGKILL")
                workers.signal_worker(slot, signal.SIGKILL)
                slot.stop_deadline = None

    def pet_watchdog(self, now: float) -> None:
        """WATCHDOG=1 only while every worker's reactor answers its heartbeat."""
        notifier = self.master.notifier
        interval = notifier.watchdog_interval or 1.0
        self.next_watchdog = now + interval
        limit = HEARTBEAT_MISSES * self.master.board.interval(self.master.settings.core.worker_timeout)
        silent = [s for s in self.master.workers.live_slots() if not s.handed_over and self.silence(s, now) >= limit]
        if not silent:
            notifier.watchdog()
            return
        for slot in silent:
            self.log_system_warn(f"{slot.label} missed its heartbeat for "
                                 f"{self.silence(slot, now):.1f} s: systemd watchdog not petted")
