"""A worker slot: the master's small, explicit record of one worker position."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from .control import Channel
from .heartbeat import cell_of
from .logger import Logger

QUICK_DEATH_SECONDS = 1.0   # a worker dying sooner than this after its fork died "quickly"
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0

_log = Logger("Master")


class SlotState(enum.Enum):
    STARTING = "starting"    # forked, on_started callbacks not yet done
    RUNNING = "running"
    RELOADING = "reloading"  # asked to run on_reload, no answer yet
    STOPPING = "stopping"    # asked to stop (or killed): will not be asked again
    WAITING = "waiting"      # dead, to be respawned at `respawn_at`


@dataclass(eq=False)
class WorkerSlot:
    slot_id: int
    generation: int = 1           # the module code it runs: 1 at start, +1 per code reload (SPEC §5)
    state: SlotState = SlotState.WAITING
    pid: int | None = None
    channel: Channel | None = None
    forked_at: float = 0.0
    started_at: float | None = None
    quick_deaths: int = 0
    respawn_at: float | None = None
    retiring: bool = False        # removed by TTOU (or a smaller `workers`): not respawned
    abort_sent_at: float | None = None
    stop_deadline: float | None = None   # asked to stop: SIGKILL after this (graceful_timeout)
    # Forked by the master's image before its exec on an upgraded core (reexec.py): its
    # heartbeat cell and its code are gone from the master, so it is neither
    # heartbeat-monitored nor respawned.
    handed_over: bool = False
    degraded: tuple[str, ...] = ()   # resources its worker could not open (oversipd.resources)

    @property
    def label(self) -> str:
        """How log lines name this worker: its generation, slot and pid."""
        return f"generation {self.generation} worker {self.slot_id} (pid {self.pid})"

    def transition(self, state: SlotState, why: str = "") -> None:
        if state is not self.state:
            _log.log_system_debug(f"{self.label}: "
                                  f"{self.state.value} -> {state.value}{': ' + why if why else ''}")
            self.state = state

    @property
    def cell(self) -> int:
        """Its heartbeat cell."""
        return cell_of(self.slot_id, self.generation)

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def forked(self, pid: int, channel: Channel) -> None:
        self.pid, self.channel = pid, channel
        self.forked_at = time.monotonic()
        self.started_at = None
        self.abort_sent_at = None
        self.respawn_at = None
        self.stop_deadline = None
        self.degraded = ()
        self.transition(SlotState.STARTING, "forked")

    def died(self, now: float) -> bool:
        """Record a death; True when it was a quick one (within a second of the fork)."""
        quick = now - self.forked_at < QUICK_DEATH_SECONDS
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        self.pid = None
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        return quick

    def respawn_delay(self) -> float:
        """At once after a slow death or a first quick one; then 0.1 s doubling up to 5 s."""
        if self.quick_deaths <= 1:
            return 0.0
        return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.quick_deaths - 2))
