"""New settings applied, and the reload handshake: which workers still owe their on_reload answer, READY=1 once all gave it, and the
reload that HUPs (or a SIGUSR2) asked for meanwhile.

What a reload does (in place, a new generation, an exec on an upgraded
core) is decided by the master's `begin_reload` (master.py).
"""

from __future__ import annotations

from typing import Any, Protocol

import oversipd

from . import control, listeners, logger
from .heartbeat import HeartbeatBoard
from .logger import Logger
from .settings import Settings
from .slots import SlotState, WorkerSlot
from .systemd import Notifier


class Slots(Protocol):
    def live_slots(self) -> list[WorkerSlot]: ...
    def manage_workers(self) -> None: ...


class Swaps(Protocol):
    swap: Any    # the code reload in progress (generations.Swap), if any


class MasterView(Protocol):
    """What the handshake needs of the master."""

    settings: Settings
    target_workers: int
    ready: bool
    stop_request: Any
    notifier: Notifier
    board: HeartbeatBoard
    workers: Slots
    swapper: Swaps

    def begin_reload(self, new_generation: bool = False) -> None: ...
    def status_line(self) -> str: ...


class Reloader(Logger):
    """A reload in progress, the ones asked for meanwhile, and the count of those done."""

    log_id = "Master"

    def __init__(self, master: MasterView) -> None:
        self.master = master
        self.reload_in_progress = False
        self.reload_pending = False
        self.new_generation_pending = False  # a SIGUSR2 during a reload: the next one swaps generations
        self.awaiting_reload: set[int] = set()
        self.reloads = 0

    def reload_in_place(self, new: Settings) -> None:
        """The code is unchanged: every worker runs its on_reload callbacks with the new settings."""
        self.apply_settings(new)
        self.awaiting_reload = set()
        for slot in self.master.workers.live_slots():
            if slot.channel.send(control.RELOAD, new):
                self.awaiting_reload.add(slot.slot_id)
                if slot.state is SlotState.RUNNING:
                    slot.transition(SlotState.RELOADING, "SIGHUP")
        self.reloads += 1
        self.finish_reload_if_acknowledged()

    def apply_settings(self, new: Settings) -> None:
        """The master runs on `new` from now on; say what takes effect only at a restart."""
        master = self.master
        old, master.settings = master.settings, new
        oversipd.config = new
        logger.set_level(new.core.log_level)
        for key in ("modules_dir", "server_script", "user", "group"):
            if getattr(old.core, key) != getattr(new.core, key):
                self.log_system_warn(f"core.{key} changed: takes effect at the next restart")
        listeners.warn_if_changed(old.listen, new.listen, self)
        if old.sip is not None or new.sip is not None:
            from .sip.service import warn_if_changed
            warn_if_changed(old.sip, new.sip, self)
        if new.core.worker_timeout != old.core.worker_timeout:
            # Each worker beats at the new pace once it has the new settings;
            # until then, its last beat counts as fresh.
            for slot in master.workers.live_slots():
                master.board.beat(slot.cell)
        if new.workers_in_file != old.workers_in_file:
            master.target_workers = new.core.workers
        master.workers.manage_workers()

    def worker_reloaded(self, slot: WorkerSlot) -> None:
        if slot.state is SlotState.RELOADING:
            slot.transition(SlotState.RUNNING, "on_reload done")
        self.awaiting_reload.discard(slot.slot_id)
        self.finish_reload_if_acknowledged()

    def finish_reload_if_acknowledged(self) -> None:
        if self.reload_in_progress and self.master.swapper.swap is None and not self.awaiting_reload:
            self.log_system_info("reload done: every worker ran its on_reload callbacks")
            self.finish_reload()

    def finish_reload(self, refused: str | None = None) -> None:
        """READY=1 (with a STATUS= saying why when `refused`); then the reload that HUPs asked for meanwhile."""
        master = self.master
        self.reload_in_progress = False
        if master.ready:
            master.notifier.ready(refused or master.status_line())
        if self.reload_pending and master.stop_request is None:
            self.reload_pending = False
            new_generation, self.new_generation_pending = self.new_generation_pending, False
            master.begin_reload(new_generation)
