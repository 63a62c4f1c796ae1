"""The master: one selector loop that turns signals and worker messages into actions.

Signal handlers do nothing but exist: `signal.set_wakeup_fd` writes one
byte per delivered signal to a pipe the loop reads, so every signal is
counted (two SIGTTINs are two workers) and handled as an ordinary event.
The loop sleeps in `select()` until a signal, a worker message or the
next deadline (respawn, worker_timeout, graceful stop, watchdog).
"""

from __future__ import annotations

import faulthandler
import functools
import gc
import os
import selectors
import signal
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import oversipd

from . import altstack, control, listeners, logger, privileges
from .control import Channel
from .errors import CRASH_LOOP_MESSAGE, EXIT_FATAL, EXIT_OK, WORKER_EXIT_FATAL, ConfigError, HaltServer
from .heartbeat import MAX_INTERVAL, HeartbeatBoard
from .logger import Logger
from .settings import MAX_WORKERS, Overrides, Settings, load_settings
from .slots import FIRST_BACKOFF, SlotState, WorkerSlot
from .systemd import Notifier
from .worker import worker_main

ABORT_GRACE = 1.0  # seconds between SIGABRT (traceback) and SIGKILL for a stuck reactor
# A worker answers its heartbeat while its last beat is younger than this
# many heartbeat intervals; the systemd watchdog is petted only then.
HEARTBEAT_MISSES = 3
# epoll cannot wait longer than ~24 days (a C int of milliseconds); a longer
# worker_timeout or graceful_timeout is legal, so the loop wakes and re-computes.
MAX_WAIT = 3600.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
IGNORED_SIGNALS = (signal.SIGUSR2, signal.SIGWINCH, signal.SIGALRM, signal.SIGPIPE)
IGNORED_LOG_INTERVAL = 1.0  # seconds between two "ignoring SIGPIPE" lines


@dataclass
class StopRequest:
    error: bool          # what the workers' on_terminated callbacks get
    status: int          # the master's exit status


def _do_nothing(signum: int, frame: object) -> None:
    """The byte in the wakeup pipe is the event; the handler has no work."""


def run_on_initialize() -> None:
    """SystemEvents.on_initialize, once, in the master, before the fork; failure is fatal."""
    import asyncio

    from .callbacks import SystemEvents
    from .launcher import Launcher

    handler = SystemEvents.handler("on_initialize")
    if handler is None:
        return
    try:
        result = handler()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except HaltServer:
        raise
    except BaseException as error:
        Logger("SystemEvents").log_system_crit("on_initialize raised:")
        Launcher.fatal(error)


class Master(Logger):
    log_id = "Master"

    def __init__(self, settings: Settings, overrides: Overrides = Overrides(),
                 on_ready: Callable[[], None] | None = None, private_fds: Sequence[int] = ()) -> None:
        self.settings = settings
        self.overrides = overrides
        self.on_ready = on_ready              # called once, when every worker ran on_started
        self.private_fds = list(private_fds)  # the master's alone (pid file lock): closed in workers
        self.target_workers = settings.core.workers
        self.slots: dict[int, WorkerSlot] = {}
        self.selector = selectors.DefaultSelector()
        self.notifier = Notifier()
        # Under a systemd watchdog, workers beat often enough to prove, at
        # each ping, that every reactor still answers.
        watchdog = self.notifier.watchdog_interval
        self.board = HeartbeatBoard(max_interval=min(MAX_INTERVAL, watchdog / 2) if watchdog else MAX_INTERVAL)
        self.signal_r, self.signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ready = False
        self.stop_request: StopRequest | None = None
        self.reload_in_progress = False
        self.reload_pending = False
        self.awaiting_reload: set[int] = set()
        self.reloads = 0
        self.respawns = 0
        self.next_watchdog = time.monotonic() if self.notifier.watchdog_interval else None
        self.dispatch: dict[int, Callable[[], None]] = {
            **{signum: functools.partial(self.handle_stop_signal, signum) for signum in STOP_SIGNALS},
            signal.SIGHUP: self.handle_hup,
            signal.SIGUSR1: self.handle_usr1,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
            signal.SIGCHLD: self.reap_workers,
        }
        self.handled_signals = [*self.dispatch, *IGNORED_SIGNALS]
        self.ignored_logged_at: dict[int, float] = {}

    # --- the loop -------------------------------------------------------------

    def run(self) -> int:
        """Fork the workers and serve until stopped; return the exit status."""
        self.install_signal_handlers()
        # Inherited by every worker: SIGABRT for a stuck reactor puts each
        # thread's Python stack in the log before the process dies.
        faulthandler.enable(all_threads=True)
        self.install_signal_stack()
        # Objects made so far are never collected in the workers: freezing
        # them keeps the collector from touching (and copying) their pages.
        gc.freeze()
        self.manage_workers()
        self.log_system_info(f"started {len(self.slots)} worker(s)")
        while not self.finished():
            self.wait_for_events()
            self.run_due_work(time.monotonic())
        self.log_system_info(f"stopped, exit status {self.stop_request.status}")
        return self.stop_request.status

    def install_signal_stack(self) -> None:
        """Room for every signal handler nested at once (oversipd/altstack.py); workers inherit it."""
        try:
            altstack.install()
        except (OSError, AttributeError) as error:
            self.log_system_warn(f"keeping faulthandler's small signal stack: {error}")

    def install_signal_handlers(self) -> None:
        self.selector.register(self.signal_r, selectors.EVENT_READ, self.read_signals)
        signal.set_wakeup_fd(self.signal_w, warn_on_full_buffer=False)
        for signum in self.handled_signals:
            signal.signal(signum, _do_nothing)

    def finished(self) -> bool:
        return self.stop_request is not None and not any(s.alive for s in self.slots.values())

    def wait_for_events(self) -> None:
        deadline = self.next_deadline()
        timeout = None if deadline is None else min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
        for key, _ in self.selector.select(timeout):
            key.data()

    def next_deadline(self) -> float | None:
        # No petting while stopping: STOPPING=1 was sent.
        deadlines = [self.next_watchdog] if self.next_watchdog is not None and self.stop_request is None else []
        deadlines += [self.slot_deadline(slot) for slot in self.slots.values()]
        # inf marks a deadline already acted upon (SIGKILL sent): nothing more is due.
        return min((d for d in deadlines if d is not None and d != float("inf")), default=None)

    def slot_deadline(self, slot: WorkerSlot) -> float | None:
        """When the master must next look at `slot` (respawn, graceful_timeout, worker_timeout)."""
        if slot.state is SlotState.WAITING:
            return slot.respawn_at
        if not slot.alive:
            return None
        if slot.state is SlotState.STOPPING:
            return slot.stop_deadline
        if slot.abort_sent_at is not None:
            return slot.abort_sent_at + ABORT_GRACE
        if self.settings.core.worker_timeout:
            return self.board.last_beat(slot.slot_id) + self.settings.core.worker_timeout
        return None

    def run_due_work(self, now: float) -> None:
        self.kill_overdue_stopping_workers(now)
        if self.stop_request is not None:
            return
        for slot in list(self.slots.values()):
            if slot.state is SlotState.WAITING and slot.respawn_at is not None and slot.respawn_at <= now:
                self.spawn_worker(slot)
        self.murder_unresponsive_workers(now)
        if self.next_watchdog is not None and now >= self.next_watchdog:
            self.pet_watchdog(now)

    # --- signals ------------------------------------------------------------

    def read_signals(self) -> None:
        try:
            data = os.read(self.signal_r, 4096)
        except BlockingIOError:
            return
        for signum in data:  # one byte per delivered signal: count each one
            handler = self.dispatch.get(signum)
            if handler is None:  # USR2, WINCH, ALRM, PIPE
                self.log_ignored_signal(signum)
            else:
                handler()

    def log_ignored_signal(self, signum: int) -> None:
        """Each one is logged; SIGPIPE at most once a second.

        When stderr's reader is gone, writing the line raises SIGPIPE itself:
        logging each of those would feed a storm that fills the signal pipe
        and drops the SIGTERM meant to stop us.
        """
        now = time.monotonic()
        last = self.ignored_logged_at.get(signum, -IGNORED_LOG_INTERVAL)
        if signum != signal.SIGPIPE or now - last >= IGNORED_LOG_INTERVAL:
            self.ignored_logged_at[signum] = now
            self.log_system_notice(f"ignoring {signal.Signals(signum).name}")

    def handle_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop_request is not None:
            self.log_system_notice(f"{name}: already stopping")
            return
        self.begin_stop(error=False, status=EXIT_OK, reason=f"stop requested ({name})")

    def handle_hup(self) -> None:
        if self.stop_request is not None:
            return
        if self.reload_in_progress:
            self.reload_pending = True  # any number of HUPs now: one more reload
            self.log_system_info("SIGHUP during a reload: another reload will follow")
            return
        self.begin_reload()

    def handle_usr1(self) -> None:
        if self.stop_request is not None:
            return
        self.log_system_info("SIGUSR1: every worker runs SystemEvents.on_user_reload")
        for slot in self.live_slots():
            slot.channel.send(control.USER_RELOAD)

    def handle_ttin(self) -> None:
        if self.stop_request is None and self.target_workers < MAX_WORKERS:
            self.target_workers += 1
            self.log_system_info(f"SIGTTIN: {self.target_workers} worker(s)")
            self.manage_workers()

    def handle_ttou(self) -> None:
        if self.stop_request is not None:
            return
        if self.target_workers == 1:
            self.log_system_notice("SIGTTOU: already at one worker")
            return
        self.target_workers -= 1
        self.log_system_info(f"SIGTTOU: {self.target_workers} worker(s)")
        self.manage_workers()

    # --- workers: spawn, count, reap ------------------------------------------

    def live_slots(self) -> list[WorkerSlot]:
        return [s for s in self.slots.values() if s.alive and s.state is not SlotState.STOPPING]

    def manage_workers(self) -> None:
        """Spawn or retire workers until the count matches target_workers."""
        active = sorted((s for s in self.slots.values() if not s.retiring), key=lambda s: s.slot_id)
        for slot in active[self.target_workers:]:
            self.retire_worker(slot)
        for _ in range(self.target_workers - len(active)):
            slot = WorkerSlot(self.free_slot_id())
            self.slots[slot.slot_id] = slot
            self.spawn_worker(slot)

    def free_slot_id(self) -> int:
        slot_id = 1
        while slot_id in self.slots:
            slot_id += 1
        return slot_id

    def retire_worker(self, slot: WorkerSlot) -> None:
        if not slot.alive:
            del self.slots[slot.slot_id]
            return
        slot.retiring = True
        self.stop_worker(slot, error=False)

    def spawn_worker(self, slot: WorkerSlot) -> bool:
        """Fork the worker of `slot`; False (and a respawn scheduled) when fork fails."""
        master_end, worker_end = Channel.pair()
        self.board.beat(slot.slot_id)
        inherited = [self.signal_r, self.signal_w, self.selector.fileno(), master_end.fileno(),
                     *self.private_fds, *self.notifier.filenos(),
                     *(s.channel.fileno() for s in self.slots.values() if s.channel)]
        # Block our signals across the fork: a signal landing in the child
        # before it resets its handlers would wake the master's pipe.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.handled_signals)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            master_end.close()
            worker_end.close()
            self.log_system_error(f"cannot fork worker {slot.slot_id}: {error}")
            slot.quick_deaths += 1  # back off as for a worker that died at once
            self.schedule_respawn(slot, max(slot.respawn_delay(), FIRST_BACKOFF))
            return False
        if pid == 0:
            worker_main(slot.slot_id, worker_end, self.settings, self.board, inherited)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker_end.close()
        slot.forked(pid, master_end)
        self.selector.register(master_end.sock, selectors.EVENT_READ,
                               lambda: self.read_worker_messages(slot))
        return True

    def stop_worker(self, slot: WorkerSlot, error: bool) -> None:
        slot.transition(SlotState.STOPPING, "asked to stop")
        slot.stop_deadline = time.monotonic() + self.settings.core.graceful_timeout
        self.awaiting_reload.discard(slot.slot_id)
        if slot.channel is None or not slot.channel.send(control.STOP, error):
            self.signal_worker(slot, signal.SIGTERM)

    def signal_worker(self, slot: WorkerSlot, signum: int) -> None:
        try:
            os.kill(slot.pid, signum)
        except ProcessLookupError:
            pass  # already dead; SIGCHLD is on its way

    def read_worker_messages(self, slot: WorkerSlot) -> None:
        messages = slot.channel.receive() if slot.channel else None
        if messages is None:  # EOF: the worker is exiting; SIGCHLD will tell how
            self.unregister_channel(slot)
            return
        for kind, _ in messages:
            if kind == control.STARTED:
                self.worker_started(slot)
            elif kind == control.RELOADED:
                self.worker_reloaded(slot)

    def unregister_channel(self, slot: WorkerSlot) -> None:
        if slot.channel is not None:
            try:
                self.selector.unregister(slot.channel.sock)
            except (KeyError, ValueError):
                pass

    def worker_started(self, slot: WorkerSlot) -> None:
        slot.started_at = time.monotonic()
        if slot.state is SlotState.STARTING:
            slot.transition(SlotState.RUNNING, "on_started done")
        if not self.ready and not any(s.state is SlotState.STARTING for s in self.slots.values()):
            self.ready = True
            self.log_system_notice(f"ready: {len(self.live_slots())} worker(s) running")
            self.notifier.ready(self.status_line())
            if self.on_ready is not None:
                self.on_ready()
        elif self.ready:  # a respawned or added worker: the count went back up
            self.notifier.status(self.status_line())

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots.values() if s.pid == pid), None)
            if slot is not None:
                self.worker_exited(slot, status)

    def worker_exited(self, slot: WorkerSlot, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        what = f"worker {slot.slot_id} (pid {slot.pid}) {how}"
        had_started = slot.started_at is not None
        self.unregister_channel(slot)
        quick = slot.died(time.monotonic())
        self.awaiting_reload.discard(slot.slot_id)
        if self.stop_request is not None or slot.retiring:
            self.log_system_info(what)
            del self.slots[slot.slot_id]
        elif code == WORKER_EXIT_FATAL:
            self.log_system_crit(f"{what}: Launcher.fatal was called; stopping the daemon")
            del self.slots[slot.slot_id]
            self.begin_stop(error=True, status=EXIT_FATAL, reason="fatal error in a worker")
        elif not self.ready and not had_started:
            self.log_system_crit(f"{what} before its on_started callbacks completed; start-up failed")
            del self.slots[slot.slot_id]
            self.begin_stop(error=True, status=EXIT_FATAL, reason="start-up failed")
        elif quick and self.settings.core.respawn_limit and slot.quick_deaths >= self.settings.core.respawn_limit:
            self.log_system_crit(f"{what}: {CRASH_LOOP_MESSAGE}: worker {slot.slot_id} died "
                                 f"{slot.quick_deaths} times in a row within a second of its start")
            del self.slots[slot.slot_id]
            self.begin_stop(error=True, status=EXIT_FATAL, reason=CRASH_LOOP_MESSAGE)
        else:
            outcome = self.respawn_worker(slot, quick)
            (self.log_system_error if code != 0 else self.log_system_notice)(f"{what}; {outcome}")
            self.notifier.status(self.status_line())
        self.finish_reload_if_acknowledged()

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

    def murder_unresponsive_workers(self, now: float) -> None:
        """SIGABRT (faulthandler prints the traceback) a stuck reactor, then SIGKILL it."""
        timeout = self.settings.core.worker_timeout
        for slot in self.slots.values():
            if not slot.alive or slot.state is SlotState.STOPPING:
                continue
            if slot.abort_sent_at is not None:
                if now >= slot.abort_sent_at + ABORT_GRACE:
                    self.log_system_crit(f"worker {slot.slot_id} (pid {slot.pid}) survived SIGABRT; SIGKILL")
                    self.signal_worker(slot, signal.SIGKILL)
                    slot.abort_sent_at = float("inf")
            elif timeout and now - self.board.last_beat(slot.slot_id) >= timeout:
                self.log_system_crit(f"worker {slot.slot_id} (pid {slot.pid}): reactor unresponsive "
                                     f"for {timeout:g} s (worker_timeout); sending SIGABRT")
                self.signal_worker(slot, signal.SIGABRT)
                slot.abort_sent_at = now

    def kill_overdue_stopping_workers(self, now: float) -> None:
        """graceful_timeout after a worker was asked to stop (daemon stop, TTOU, fewer `workers`): SIGKILL."""
        for slot in self.slots.values():
            if slot.alive and slot.stop_deadline is not None and now >= slot.stop_deadline:
                self.log_system_warn(f"worker {slot.slot_id} (pid {slot.pid}) still running after "
                                     "graceful_timeout; SIGKILL")
                self.signal_worker(slot, signal.SIGKILL)
                slot.stop_deadline = None

    def pet_watchdog(self, now: float) -> None:
        """WATCHDOG=1 only while every worker's reactor answers its heartbeat."""
        interval = self.notifier.watchdog_interval or 1.0
        self.next_watchdog = now + interval
        limit = HEARTBEAT_MISSES * self.board.interval(self.settings.core.worker_timeout)
        silent = [s for s in self.live_slots() if now - self.board.last_beat(s.slot_id) >= limit]
        if not silent:
            self.notifier.watchdog()
            return
        for slot in silent:
            self.log_system_warn(f"worker {slot.slot_id} (pid {slot.pid}) missed its heartbeat for "
                                 f"{now - self.board.last_beat(slot.slot_id):.1f} s: systemd watchdog not petted")

    # --- stopping -----------------------------------------------------------

    def begin_stop(self, error: bool, status: int, reason: str) -> None:
        if self.stop_request is not None:
            return
        self.stop_request = StopRequest(error, status)
        self.log_system_notice(f"stopping ({reason})")
        self.notifier.stopping(f"stopping: {reason}")
        for slot in list(self.slots.values()):
            if slot.alive:
                self.stop_worker(slot, error)
            else:
                del self.slots[slot.slot_id]

    # --- reloading -------------------------------------------------------------

    def begin_reload(self) -> None:
        self.reload_in_progress = True
        # Before start-up completes, systemd waits for the start's READY=1
        # alone: a reload then must not announce itself, nor report ready.
        if self.ready:
            self.notifier.reloading("reloading")
        try:
            new = load_settings(self.settings.path, self.overrides)
            privileges.check_identity(new)
        except ConfigError as error:
            self.log_system_error(f"reload refused, keeping the old configuration: {error.one_line()}")
            self.finish_reload(rejected=True)
            return
        self.apply_settings(new)
        self.awaiting_reload = set()
        for slot in self.live_slots():
            if slot.channel.send(control.RELOAD, new):
                self.awaiting_reload.add(slot.slot_id)
                if slot.state is SlotState.RUNNING:
                    slot.transition(SlotState.RELOADING, "SIGHUP")
        self.reloads += 1
        self.finish_reload_if_acknowledged()

    def apply_settings(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        oversipd.config = new
        logger.set_level(new.core.log_level)
        for key in ("modules_dir", "server_script", "user", "group"):
            if getattr(old.core, key) != getattr(new.core, key):
                self.log_system_warn(f"core.{key} changed: takes effect at the next restart")
        listeners.warn_if_changed(old.listen, new.listen, self)
        if new.core.worker_timeout != old.core.worker_timeout:
            # Each worker beats at the new pace once it has the new settings;
            # until then, its last beat counts as fresh.
            for slot in self.live_slots():
                self.board.beat(slot.slot_id)
        if new.workers_in_file != old.workers_in_file:
            self.target_workers = new.core.workers
        self.manage_workers()

    def worker_reloaded(self, slot: WorkerSlot) -> None:
        if slot.state is SlotState.RELOADING:
            slot.transition(SlotState.RUNNING, "on_reload done")
        self.awaiting_reload.discard(slot.slot_id)
        self.finish_reload_if_acknowledged()

    def finish_reload_if_acknowledged(self) -> None:
        if self.reload_in_progress and not self.awaiting_reload:
            self.finish_reload(rejected=False)

    def finish_reload(self, rejected: bool) -> None:
        self.reload_in_progress = False
        if rejected:
            status = "reload rejected: invalid configuration; running on the old one"
        else:
            self.log_system_info("reload done: every worker ran its on_reload callbacks")
            status = self.status_line()
        if self.ready:
            self.notifier.ready(status)
        if self.reload_pending and self.stop_request is None:
            self.reload_pending = False
            self.begin_reload()

    def status_line(self) -> str:
        running = sum(1 for s in self.slots.values() if s.state in (SlotState.RUNNING, SlotState.RELOADING))
        return f"{running} of {self.target_workers} worker(s) running; {self.reloads} reload(s), {self.respawns} respawn(s)"
