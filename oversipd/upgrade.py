"""An upgraded oversipd: the master checks the installed core with its own `oversipd check`, then
re-executes itself on it (same PID), handing its workers over across the exec (reexec.py)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict
from typing import Callable, Protocol, Sequence

import oversipd

from . import process, reexec, resources
from .control import Channel
from .errors import EXIT_FATAL
from .fingerprint import Fingerprint
from .generations import Swap, SwapPhase
from .logger import Logger
from .settings import Overrides, Settings
from .slots import SlotState, WorkerSlot

HANDED_OVER_NOT_RESPAWNED = ("it ran the code of oversipd before the upgrade, which this master no longer "
                             "holds: not respawned (a HUP or SIGUSR2 starts a new generation)")


class Slots(Protocol):
    slots: dict[int, WorkerSlot]
    next_slots: dict[int, WorkerSlot]
    leaving: list[WorkerSlot]
    respawns: int

    def all_slots(self) -> list[WorkerSlot]: ...
    def forget_slot(self, slot: WorkerSlot) -> None: ...
    def register_channel(self, slot: WorkerSlot) -> None: ...


class Reloads(Protocol):
    reload_in_progress: bool
    reload_pending: bool
    new_generation_pending: bool
    reloads: int


class Swaps(Protocol):
    swap: Swap | None

    def start_swap_check(self, swap: Swap, start_check: Callable[[], tuple[int, int]]) -> None: ...
    def refuse_swap(self, why: str) -> None: ...
    def finish_swap_if_old_generation_gone(self) -> None: ...


class MasterView(Protocol):
    """What the upgrade needs of the master."""

    settings: Settings
    argv: list[str]
    daemonized: bool
    overrides: Overrides
    private_fds: list[int]
    insecure_modules: bool
    generation: int
    target_workers: int
    fingerprint: Fingerprint
    handled_signals: Sequence[int]
    signal_r: int
    ready: bool
    workers: Slots
    reloader: Reloads
    swapper: Swaps

    def masters_fds(self) -> list[int]: ...
    def swapping_code(self) -> bool: ...
    def begin_stop(self, error: bool, status: int, reason: str) -> None: ...


class CoreUpgrade(Logger):
    """The exec handover, from the check of the installed core to the handed-over generation's last worker."""

    log_id = "Master"

    def __init__(self, master: MasterView) -> None:
        self.master = master

    def serving_handed_over(self) -> bool:
        """True while the serving generation came across an exec (its code is gone from the master)."""
        return any(slot.handed_over for slot in self.master.workers.slots.values())

    def core_upgraded(self, code: Fingerprint) -> bool:
        return code.core_version is not None and code.core_version != self.master.fingerprint.core_version

    def begin_core_upgrade(self, new: Settings, code: Fingerprint) -> None:
        """Check the installed core with its own `oversipd check`; the old generation serves on meanwhile."""
        master = self.master
        self.log_system_notice(f"oversipd {code.core_version} is installed, this master runs "
                               f"{master.fingerprint.core_version}: checking it with its own `oversipd check`")
        swap = Swap(settings=new, reason=f"oversipd upgraded to {code.core_version}", fingerprint=code,
                    core_upgrade=True)
        argv = reexec.check_command(new.path, master.overrides.modules_dir, master.insecure_modules)
        master.swapper.start_swap_check(swap, lambda: reexec.start_check(argv, master.masters_fds()))

    def exec_new_core(self) -> None:
        """Hand over what must outlive this image, then become the installed oversipd (same PID)."""
        master = self.master
        swap = master.swapper.swap
        assert swap is not None
        handover = self.collect_handover(swap.reason, swap.fingerprint.core_version)
        self.log_system_notice(f"{swap.reason}: re-executing the master on it, pid {os.getpid()} unchanged; "
                               f"{len(handover.workers)} worker(s) of generation {master.generation} serve meanwhile")
        try:
            reexec.exec_new_core(handover, master.handled_signals, master.signal_r)
        except OSError as error:
            master.swapper.refuse_swap(f"cannot execute {reexec.INTERPRETER[0]}: {error.strerror or error}")

    def collect_handover(self, reason: str, core_version: str | None) -> reexec.Handover:
        master, reloader = self.master, self.master.reloader
        parts, fds = reexec.collect_parts()
        workers = [reexec.HandedWorker(slot.slot_id, slot.pid, slot.generation, slot.channel.fileno(),
                                       stopping=slot.state is SlotState.STOPPING)
                   for slot in master.workers.all_slots() if slot.alive and slot.channel is not None]
        pid_fd = master.private_fds[0] if master.private_fds and master.settings.core.pid_file else None
        pid_file = {"path": str(master.settings.core.pid_file), "fd": pid_fd} if pid_fd is not None else None
        fds += [worker.fd for worker in workers] + ([pid_fd] if pid_fd is not None else [])
        return reexec.Handover(argv=master.argv, conf=str(master.settings.path), overrides=asdict(master.overrides),
                               insecure_modules=master.insecure_modules,
                               generation=master.generation, target_workers=master.target_workers,
                               reloads=reloader.reloads, respawns=master.workers.respawns,
                               daemonized=master.daemonized, reason=reason, core_version=core_version,
                               reload_pending=reloader.reload_pending,
                               new_generation_pending=reloader.new_generation_pending, pid_file=pid_file,
                               workers=workers, parts=parts, fds=fds)

    def adopt_handover(self, handover: reexec.Handover) -> None:
        """In the new image: the workers and counters of the old one; it was ready, and a swap starts."""
        master, workers, reloader = self.master, self.master.workers, self.master.reloader
        if handover.core_version != oversipd.__version__:
            self.log_system_warn(f"the installed metadata says oversipd {handover.core_version}, "
                                 f"the code imported is {oversipd.__version__}: reinstall oversipd")
        # Compared with at the next reload: the same metadata must not re-execute again.
        master.fingerprint = Fingerprint(master.fingerprint.files, master.fingerprint.drop_ins, handover.core_version)
        master.generation, master.target_workers = handover.generation, handover.target_workers
        reloader.reloads, workers.respawns = handover.reloads, handover.respawns
        reloader.reload_pending, reloader.new_generation_pending = (handover.reload_pending,
                                                                    handover.new_generation_pending)
        now = time.monotonic()
        for handed in handover.workers:
            slot = WorkerSlot(handed.slot, handed.generation, handed_over=True)
            channel = Channel(socket.socket(fileno=reexec.adopt_fd(handed.fd)))
            slot.pid, slot.channel = handed.pid, channel
            slot.forked_at = slot.started_at = now - 1.0  # not a quick death, whatever happens
            slot.transition(SlotState.RUNNING, "handed over across the exec")
            workers.register_channel(slot)
            if handed.stopping or handed.generation != handover.generation:
                slot.transition(SlotState.STOPPING, "was stopping before the exec")
                slot.stop_deadline = now + master.settings.core.graceful_timeout
                workers.leaving.append(slot)
            else:
                workers.slots[slot.slot_id] = slot
        master.ready = True
        resources.first_start_done()
        master.swapper.swap = Swap(settings=master.settings, reason=handover.reason, phase=SwapPhase.STARTING,
                                   fingerprint=master.fingerprint, core_upgrade=True)
        reloader.reload_in_progress = True

    def keep_handed_over_generation(self, swap: Swap, why: str) -> None:
        """The first generation on the upgraded core failed: the handed-over one serves on, not respawned."""
        master = self.master
        process.generation = master.generation
        self.log_system_crit(f"the workers of generation {master.generation} {HANDED_OVER_NOT_RESPAWNED}")
        swap.phase, swap.failure = SwapPhase.RETIRING, why
        self.stop_if_no_worker_left()
        master.swapper.finish_swap_if_old_generation_gone()

    def handed_over_worker_exited(self, slot: WorkerSlot, what: str) -> None:
        self.master.workers.forget_slot(slot)
        self.log_system_error(f"{what}; {HANDED_OVER_NOT_RESPAWNED}")
        if not self.master.swapping_code():
            self.stop_if_no_worker_left()

    def stop_if_no_worker_left(self) -> None:
        workers = self.master.workers
        if not any(slot.alive for slot in (*workers.slots.values(), *workers.next_slots.values())):
            self.log_system_crit("no worker left: the generation on the upgraded oversipd did not start "
                                 "and the one from before cannot be respawned")
            self.master.begin_stop(error=True, status=EXIT_FATAL, reason="no worker left after the upgrade")
