"""The code swap the master drives (SPEC §5, "Code changes on reload"): check the new code in a throw-away
child, import it and fork a new generation, retire the old one once the new one serves, or put the old code
back when the new generation fails to start.  What a generation's code is, and how it is re-imported and
undone, lives in generations.py.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import oversipd

from . import fingerprint, generations, logger, process, reexec
from .fingerprint import Fingerprint
from .generations import CodeSnapshot, Swap, SwapPhase
from .logger import Logger
from .settings import Settings
from .slots import SlotState, WorkerSlot

RELOAD_REFUSED_CODE = "reload refused: the new module code failed its check"
NEW_GENERATION_FAILED = "generation {generation} stays in service"


class Slots(Protocol):
    slots: dict[int, WorkerSlot]
    next_slots: dict[int, WorkerSlot]
    leaving: list[WorkerSlot]

    def spawn_worker(self, slot: WorkerSlot) -> bool: ...
    def forget_slot(self, slot: WorkerSlot) -> None: ...
    def stop_worker(self, slot: WorkerSlot, error: bool, retire: bool = False) -> None: ...
    def manage_workers(self) -> None: ...


class Reloads(Protocol):
    reloads: int

    def apply_settings(self, new: Settings) -> None: ...
    def finish_reload(self, refused: str | None = None) -> None: ...


class Upgrade(Protocol):
    def exec_new_core(self) -> None: ...
    def keep_handed_over_generation(self, swap: Swap, why: str) -> None: ...


class MasterView(Protocol):
    """What the swap needs of the master."""

    settings: Settings
    generation: int
    target_workers: int
    fingerprint: Fingerprint
    code_paths: tuple[Path, Path | None]
    insecure_modules: bool
    selector: selectors.BaseSelector
    stop_request: Any
    workers: Slots
    reloader: Reloads
    upgrade: Upgrade

    def masters_fds(self) -> list[int]: ...


class Swapper(Logger):
    """The swap in progress, if any, from its check to the last exit of the generation that does not serve."""

    log_id = "Master"

    def __init__(self, master: MasterView, call_on_initialize: Callable[[], None]) -> None:
        self.master = master
        self.call_on_initialize = call_on_initialize   # SystemEvents.on_initialize, run for each new generation
        self.swap: Swap | None = None

    def swapping_code(self) -> bool:
        """True while the master holds a new generation's code that does not serve yet."""
        return self.swap is not None and self.swap.phase is SwapPhase.STARTING

    def check_deadline(self) -> float | None:
        """When the running check times out."""
        return self.swap.check_deadline if self.swap is not None else None

    # --- the check child ------------------------------------------------------------------

    def begin_swap(self, new: Settings, code: Fingerprint, reason: str, dependencies: bool) -> None:
        """Check the new code in a throw-away child; the old generation serves on meanwhile."""
        master = self.master
        self.log_system_notice(f"{reason}: checking the new code in a throw-away child")
        kept = generations.kept_dependencies() if dependencies else []
        if kept:
            self.log_system_notice(f"not imported anew, a C extension is among them (a restart upgrades them): "
                                   f"{', '.join(kept)}")
        swap = Swap(settings=new, reason=reason, dependencies=dependencies, fingerprint=code)
        self.start_swap_check(swap, lambda: generations.start_check(
            *master.code_paths, master.insecure_modules, dependencies, master.masters_fds()))

    def start_swap_check(self, swap: Swap, start_check: Callable[[], tuple[int, int]]) -> None:
        """Fork the swap's check child with `start_check` and wait on its answer (a failed fork refuses it)."""
        try:
            swap.check_pid, swap.check_fd = start_check()
        except OSError as error:
            self.refuse_swap(f"cannot fork the check: {error}")
            return
        swap.check_deadline = time.monotonic() + generations.CHECK_TIMEOUT
        self.swap = swap
        self.master.selector.register(swap.check_fd, selectors.EVENT_READ, self.read_check_result)

    def read_check_result(self) -> None:
        swap = self.swap
        assert swap is not None and swap.check_fd is not None
        try:
            data = os.read(swap.check_fd, 4096)
        except BlockingIOError:
            return
        if data:
            swap.check_output = (swap.check_output + data)[-reexec.CHECK_OUTPUT_LIMIT:]
            return
        self.close_check()
        self.conclude_check()

    def reap_check(self, pid: int, status: int) -> bool:
        """True when `pid` was the check child: its exit status may conclude the check."""
        if self.swap is None or pid != self.swap.check_pid:
            return False
        self.swap.check_status = status
        self.conclude_check()
        return True

    def conclude_check(self) -> None:
        """Once the check's output ended (and, for the core's check, its exit status is known): go on or refuse."""
        swap = self.swap
        if swap is None or swap.phase is not SwapPhase.CHECKING or swap.check_fd is not None:
            return
        if swap.core_upgrade:
            if swap.check_status is None:
                return
            code = os.waitstatus_to_exitcode(swap.check_status)
            if code == 0:
                self.master.upgrade.exec_new_core()
            else:
                self.refuse_swap(reexec.check_failure_line(swap.check_output, code))
            return
        outcome = swap.check_output.decode(errors="replace")
        if outcome == generations.CHECK_OK:
            self.start_new_generation()
        else:
            self.refuse_swap(outcome or "the check child died without an answer")

    def close_check(self) -> None:
        swap = self.swap
        if swap is None or swap.check_fd is None:
            return
        self.master.selector.unregister(swap.check_fd)
        os.close(swap.check_fd)
        swap.check_fd = swap.check_deadline = None

    def check_timed_out(self) -> None:
        self.abort_check()
        self.refuse_swap(f"the check did not finish within {generations.CHECK_TIMEOUT:g} s")

    def abort_check(self) -> None:
        """Kill a check still running (timeout, daemon stop); SIGCHLD reaps it."""
        if self.swap is None or self.swap.check_fd is None:
            return
        self.close_check()
        if self.swap.check_status is None:  # not reaped yet: the pid is still ours
            try:
                os.kill(self.swap.check_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.master.stop_request is not None:
            self.swap = None

    def refuse_swap(self, why: str) -> None:
        """The new code failed its check: nothing changes; the old generation serves on the old config."""
        self.swap = None
        self.log_system_error(f"{RELOAD_REFUSED_CODE}: {why}")
        self.master.reloader.finish_reload(refused=f"{RELOAD_REFUSED_CODE}; generation {self.master.generation} serves on")

    # --- the new generation ---------------------------------------------------------------

    def start_new_generation(self) -> None:
        """Import the new code in the master, run on_initialize, fork the new generation."""
        master = self.master
        swap = self.swap
        assert swap is not None
        swap.phase = SwapPhase.STARTING
        swap.snapshot, swap.old_settings, swap.old_target = CodeSnapshot.take(), master.settings, master.target_workers
        generation = process.generation = master.generation + 1  # what the new code sees in on_initialize
        self.log_code_changes(swap.fingerprint)
        master.reloader.apply_settings(swap.settings)
        # The generation before the last is garbage now (its module objects
        # hold reference cycles): let the collector see it, then freeze again.
        gc.unfreeze()
        for step, what in ((self.import_new_code, "module code"), (self.call_new_on_initialize, "on_initialize")):
            try:
                step()
            except BaseException as error:  # module code: anything, SystemExit and Launcher.fatal too
                self.abandon_new_generation(f"generation {generation}: "
                                            f"{generations.load_failure_line(error, what)}")
                return
        gc.collect()
        gc.freeze()  # as at start: the collector must not touch (and copy) the new code's pages
        self.fork_generation(generation)

    def fork_generation(self, generation: int) -> None:
        """Fork the workers of the new `generation` (they serve once every one ran on_started)."""
        workers = self.master.workers
        for slot_id in range(1, self.master.target_workers + 1):
            slot = workers.next_slots[slot_id] = WorkerSlot(slot_id, generation)
            if not workers.spawn_worker(slot):
                workers.forget_slot(slot)
                self.abandon_new_generation(f"generation {generation}: cannot fork its workers")
                return
        self.log_system_info(f"generation {generation}: {len(workers.next_slots)} worker(s) forked")

    def call_new_on_initialize(self) -> None:
        with generations.running_module_code():
            self.call_on_initialize()

    def import_new_code(self) -> None:
        assert self.swap is not None
        generations.import_module_code(*self.master.code_paths, self.master.insecure_modules,
                                       self.swap.dependencies)

    def log_code_changes(self, code: Fingerprint) -> None:
        old = self.master.fingerprint
        changes = fingerprint.changes(old, code)
        for name in changes.removed:
            self.log_system_notice(f"module {name} unloaded: {old.drop_ins[name]} was removed")
        for name in changes.added:
            self.log_system_notice(f"module {name} loaded: {code.drop_ins[name]} was added")
        for path in changes.edited:
            self.log_system_notice(f"{path} changed: imported again")

    def new_generation_progressed(self) -> None:
        """A new worker ran on_started; once all did, the new generation serves and the old one retires."""
        master, workers = self.master, self.master.workers
        if any(s.state is not SlotState.RUNNING for s in workers.next_slots.values()):
            return
        swap = self.swap
        assert swap is not None
        old, workers.slots, workers.next_slots = workers.slots, workers.next_slots, {}
        master.generation += 1
        master.fingerprint = swap.fingerprint
        swap.phase, swap.snapshot = SwapPhase.RETIRING, None  # the old code is not needed any more
        self.log_system_notice(f"generation {master.generation} serves with {len(workers.slots)} worker(s); "
                               f"generation {master.generation - 1} retires")
        for slot in old.values():
            if slot.alive and slot.state is not SlotState.STOPPING:
                workers.stop_worker(slot, error=False, retire=True)
            if slot.alive:
                workers.leaving.append(slot)
        workers.manage_workers()  # a TTIN or TTOU during the swap
        self.finish_swap_if_old_generation_gone()

    def finish_swap_if_old_generation_gone(self) -> None:
        """The swap ends (READY=1) once the generation that does not serve has left."""
        master = self.master
        swap = self.swap
        if swap is None or swap.phase is not SwapPhase.RETIRING:
            return
        if any(s.generation != master.generation for s in master.workers.leaving):
            return
        self.swap = None
        if swap.failure is not None:
            master.reloader.finish_reload(refused=f"reload failed: the new generation did not start; "
                                                  f"generation {master.generation} serves on")
            return
        master.reloader.reloads += 1
        self.log_system_info(f"reload done: generation {master.generation} serves, the old generation is gone")
        master.reloader.finish_reload()

    def abandon_new_generation(self, why: str) -> None:
        """The new generation failed to start: stop its workers, put the old code back; the daemon stays up."""
        master, workers = self.master, self.master.workers
        swap = self.swap
        assert swap is not None
        self.log_system_crit(f"{why}; {NEW_GENERATION_FAILED.format(generation=master.generation)}")
        for slot in list(workers.next_slots.values()):
            if slot.alive:
                workers.stop_worker(slot, error=True)
                workers.leaving.append(slot)
        workers.next_slots = {}
        if swap.snapshot is None:  # after an exec: the old code is gone (README, "Code reloads")
            master.upgrade.keep_handed_over_generation(swap, why)
            return
        swap.snapshot.restore()
        process.generation = master.generation
        gc.freeze()
        master.settings = swap.old_settings
        oversipd.config = master.settings
        logger.set_level(master.settings.core.log_level)
        master.target_workers = swap.old_target
        swap.phase, swap.snapshot, swap.failure = SwapPhase.RETIRING, None, why
        workers.manage_workers()  # an old worker that died meanwhile is respawned (at its time) on the old code
        self.finish_swap_if_old_generation_gone()
