"""The master: one selector loop that turns signals and worker messages into actions.

Signal handlers do nothing but exist: `signal.set_wakeup_fd` writes one
byte per delivered signal to a pipe the loop reads, so every signal is
counted (two SIGTTINs are two workers) and handled as an ordinary event.
The loop sleeps in `select()` until a signal, a worker message or the
next deadline (respawn, worker_timeout, graceful stop, watchdog).

A reload that finds the module code changed (or SIGUSR2) swaps in a new
generation of workers instead of reloading in place (swap.py,
generations.py).  One that finds oversipd itself upgraded re-executes the
master on the new core instead (upgrade.py, reexec.py).

The master decides; its collaborators keep their own state and do:
supervision.py the worker slots (spawn, stop, respawn with back-off),
watchdog.py the workers' deadlines (worker_timeout, graceful_timeout, the
systemd watchdog), reloading.py new settings and the reload handshake,
keeper.py the kept client connections.
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
from typing import Any, Callable, Sequence

import oversipd

from . import altstack, control, fingerprint, kept, privileges, resources
from .errors import CRASH_LOOP_MESSAGE, EXIT_FATAL, EXIT_OK, WORKER_EXIT_FATAL, ConfigError, HaltServer
from .fingerprint import Fingerprint
from .heartbeat import MAX_INTERVAL, HeartbeatBoard
from .keeper import ConnectionKeeper
from .logger import Logger
from .reexec import Handover
from .reloading import Reloader
from .settings import MAX_WORKERS, Overrides, Settings, load_settings
from .slots import SlotState, WorkerSlot
from .supervision import Supervisor
from .swap import Swapper
from .systemd import Notifier
from .upgrade import CoreUpgrade
from .watchdog import Watchdog

# epoll cannot wait longer than ~24 days (a C int of milliseconds); a longer
# worker_timeout or graceful_timeout is legal, so the loop wakes and re-computes.
MAX_WAIT = 3600.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
IGNORED_SIGNALS = (signal.SIGWINCH, signal.SIGALRM, signal.SIGPIPE)
IGNORED_LOG_INTERVAL = 1.0  # seconds between two "ignoring SIGPIPE" lines
RELOAD_REFUSED_CONFIG = "reload rejected: invalid configuration; running on the old one"


@dataclass
class StopRequest:
    error: bool          # what the workers' on_terminated callbacks get
    status: int          # the master's exit status


def _do_nothing(signum: int, frame: object) -> None:
    """The byte in the wakeup pipe is the event; the handler has no work."""


def call_on_initialize() -> None:
    """SystemEvents.on_initialize, in the master, before a generation's fork; errors propagate."""
    import asyncio

    from .callbacks import SystemEvents

    handler = SystemEvents.handler("on_initialize")
    if handler is None:
        return
    result = handler()
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def run_on_initialize() -> None:
    """on_initialize at start: a failure is fatal (the daemon exits 1)."""
    from .launcher import Launcher

    try:
        call_on_initialize()
    except HaltServer:
        raise
    except BaseException as error:
        Logger("SystemEvents").log_system_crit("on_initialize raised:")
        Launcher.fatal(error)


class Master(Logger):
    """The loop: signals and worker messages become events, handled here with the collaborators."""

    log_id = "Master"

    def __init__(self, settings: Settings, overrides: Overrides = Overrides(),
                 on_ready: Callable[[], None] | None = None, private_fds: Sequence[int] = (),
                 insecure_modules: bool = False, argv: Sequence[str] = (), daemonized: bool = False) -> None:
        self.settings = settings
        self.argv = list(argv)                # the command line an upgraded core is executed with
        self.daemonized = daemonized
        self.overrides = overrides
        self.on_ready = on_ready              # called once, when every worker ran on_started
        self.private_fds = list(private_fds)  # the master's alone (pid file lock): closed in workers
        self.target_workers = settings.core.workers
        self.generation = 1                          # the serving generation's number
        # The module code is imported from where it was at start (modules_dir
        # and server_script changes take effect at a restart).
        self.code_paths = (settings.core.modules_dir, settings.core.server_script)
        self.insecure_modules = insecure_modules
        self.fingerprint: Fingerprint = fingerprint.take(*self.code_paths, installed=False)
        self.selector = selectors.DefaultSelector()
        self.notifier = Notifier()
        # Under a systemd watchdog, workers beat often enough to prove, at
        # each ping, that every reactor still answers.
        watchdog = self.notifier.watchdog_interval
        self.board = HeartbeatBoard(max_interval=min(MAX_INTERVAL, watchdog / 2) if watchdog else MAX_INTERVAL)
        self.signal_r, self.signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ready = False
        self.stop_request: StopRequest | None = None
        self.dispatch: dict[int, Callable[[], None]] = {
            **{signum: functools.partial(self.handle_stop_signal, signum) for signum in STOP_SIGNALS},
            signal.SIGHUP: self.handle_hup,
            signal.SIGUSR1: self.handle_usr1,
            signal.SIGUSR2: self.handle_usr2,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
            signal.SIGCHLD: self.reap_workers,
        }
        self.handled_signals = [*self.dispatch, *IGNORED_SIGNALS]
        self.ignored_logged_at: dict[int, float] = {}
        # Connections workers asked us to keep across their death (SIP flows).
        self.keeper = ConnectionKeeper()
        self.workers = Supervisor(self)
        self.watchdog = Watchdog(self)
        self.reloader = Reloader(self)
        self.swapper = Swapper(self, call_on_initialize)
        self.upgrade = CoreUpgrade(self)
        # The per-slot UDP SIP sockets (oversipd.sip.transport.sockets), imported only
        # for a SIP configuration: the SIP package costs start-up time.
        self.sip_sockets: Any = None
        if settings.sip is not None:
            from .sip.transport import sockets as sip_sockets
            self.sip_sockets = sip_sockets

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
        old, new = kept.raise_descriptor_limit()
        if new != old:
            self.log_system_debug(f"open files limit raised from {old} to {new} (kept client connections)")
        self.workers.manage_workers()
        self.log_system_info(f"started {len(self.workers.slots)} worker(s)")
        return self.serve()

    def serve(self) -> int:
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
        return self.stop_request is not None and not any(s.alive for s in self.workers.all_slots())

    def wait_for_events(self) -> None:
        deadline = self.next_deadline()
        timeout = None if deadline is None else min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
        for key, _ in self.selector.select(timeout):
            key.data()

    def next_deadline(self) -> float | None:
        next_watchdog = self.watchdog.next_watchdog
        # No petting while stopping: STOPPING=1 was sent.
        deadlines = [next_watchdog] if next_watchdog is not None and self.stop_request is None else []
        deadlines += [self.watchdog.slot_deadline(slot) for slot in self.workers.all_slots()]
        deadlines.append(self.swapper.check_deadline())
        # inf marks a deadline already acted upon (SIGKILL sent): nothing more is due.
        return min((d for d in deadlines if d is not None and d != float("inf")), default=None)

    def run_due_work(self, now: float) -> None:
        self.watchdog.kill_overdue_stopping_workers(now)
        if self.stop_request is not None:
            return
        if not self.swapping_code():
            self.workers.respawn_due_workers(now)
        self.watchdog.murder_unresponsive_workers(now)
        check_deadline = self.swapper.check_deadline()
        if check_deadline is not None and now >= check_deadline:
            self.swapper.check_timed_out()
        if self.watchdog.next_watchdog is not None and now >= self.watchdog.next_watchdog:
            self.watchdog.pet_watchdog(now)

    # --- signals ------------------------------------------------------------

    def read_signals(self) -> None:
        try:
            data = os.read(self.signal_r, 4096)
        except BlockingIOError:
            return
        for signum in data:  # one byte per delivered signal: count each one
            handler = self.dispatch.get(signum)
            if handler is None:  # WINCH, ALRM, PIPE
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
        if self.reloader.reload_in_progress:
            self.reloader.reload_pending = True  # any number of HUPs now: one more reload
            self.log_system_info("SIGHUP during a reload: another reload will follow")
            return
        self.begin_reload()

    def handle_usr2(self) -> None:
        """A reload that starts a new generation even when the fingerprint saw no change."""
        if self.stop_request is not None:
            return
        if self.reloader.reload_in_progress:
            self.reloader.reload_pending = self.reloader.new_generation_pending = True
            self.log_system_info("SIGUSR2 during a reload: a new generation will follow")
            return
        self.log_system_notice("SIGUSR2: reloading with a new generation of workers")
        self.begin_reload(new_generation=True)

    def handle_usr1(self) -> None:
        if self.stop_request is not None:
            return
        self.log_system_info("SIGUSR1: every worker runs SystemEvents.on_user_reload")
        for slot in self.workers.live_slots():
            slot.channel.send(control.USER_RELOAD)

    def handle_ttin(self) -> None:
        if self.stop_request is None and self.target_workers < MAX_WORKERS:
            self.target_workers += 1
            self.log_system_info(f"SIGTTIN: {self.target_workers} worker(s)")
            self.workers.manage_workers()

    def handle_ttou(self) -> None:
        if self.stop_request is not None:
            return
        if self.target_workers == 1:
            self.log_system_notice("SIGTTOU: already at one worker")
            return
        self.target_workers -= 1
        self.log_system_info(f"SIGTTOU: {self.target_workers} worker(s)")
        self.workers.manage_workers()

    # --- workers: what they say, how they end ----------------------------------

    def masters_fds(self) -> list[int]:
        """The master's own descriptors, which a forked child must close (PITFALLS: master death)."""
        swap = self.swapper.swap
        check = [swap.check_fd] if swap is not None and swap.check_fd is not None else []
        return [self.signal_r, self.signal_w, self.selector.fileno(), *self.private_fds,
                *self.notifier.filenos(), *check,
                *(s.channel.fileno() for s in self.workers.all_slots() if s.channel), *self.keeper.filenos()]

    def read_worker_messages(self, slot: WorkerSlot, last_words: bool = False) -> None:
        """What the worker says; `last_words`: it is dead, only what it kept or released still counts."""
        messages = slot.channel.receive() if slot.channel else None
        if messages is None:  # EOF: the worker is exiting; SIGCHLD will tell how
            self.workers.unregister_channel(slot)
            return
        for kind, argument, sock in messages:
            if kind == control.KEEP:
                self.keeper.keep_connection(slot, argument, sock)
            elif kind == control.RELEASE:
                self.keeper.release_connection(slot, argument)
            elif kind == control.HAND_OVER:
                self.keeper.hand_over_connection(slot, self.workers.slots.get(slot.slot_id), *argument)
            elif last_words:
                continue
            elif kind == control.STARTED:
                self.worker_started(slot)
            elif kind == control.RELOADED:
                self.reloader.worker_reloaded(slot)
            elif kind == control.DEGRADED:
                slot.degraded = tuple(argument)
                self.notifier.status(self.status_line())

    def worker_started(self, slot: WorkerSlot) -> None:
        slot.started_at = time.monotonic()
        if slot.state is SlotState.STARTING:
            slot.transition(SlotState.RUNNING, "on_started done")
        if self.workers.next_slots.get(slot.slot_id) is slot:
            self.swapper.new_generation_progressed()
            return
        if not self.ready and not any(s.state is SlotState.STARTING for s in self.workers.slots.values()):
            self.ready = True
            resources.first_start_done()   # a worker forked from now on is degraded by a store that is down
            self.log_system_notice(f"ready: {len(self.workers.live_slots())} worker(s) running")
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
            if self.swapper.reap_check(pid, status):
                continue
            slot = next((s for s in self.workers.all_slots() if s.pid == pid), None)
            if slot is not None:
                self.worker_exited(slot, status)

    def worker_exited(self, slot: WorkerSlot, status: int) -> None:
        workers = self.workers
        code = os.waitstatus_to_exitcode(status)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        what = f"{slot.label} {how}"
        had_started = slot.started_at is not None
        in_next_generation = workers.next_slots.get(slot.slot_id) is slot
        self.read_worker_messages(slot, last_words=True)   # the connections it released before dying
        self.keeper.orphan_connections(slot)
        workers.unregister_channel(slot)
        quick = slot.died(time.monotonic())
        self.reloader.awaiting_reload.discard(slot.slot_id)
        if self.stop_request is not None or slot.retiring or slot in workers.leaving:
            self.log_system_info(what)
            workers.forget_slot(slot)
            self.swapper.finish_swap_if_old_generation_gone()
        elif slot.handed_over:
            self.upgrade.handed_over_worker_exited(slot, what)
        elif in_next_generation:
            # An exception to Launcher.fatal's "whole daemon down": the new
            # generation alone failed, and the old one still serves.
            cause = "Launcher.fatal was called" if code == WORKER_EXIT_FATAL else "died"
            workers.forget_slot(slot)
            self.swapper.abandon_new_generation(f"{what}: {cause} before its generation took over")
        elif code == WORKER_EXIT_FATAL:
            self.log_system_crit(f"{what}: Launcher.fatal was called; stopping the daemon")
            workers.forget_slot(slot)
            self.begin_stop(error=True, status=EXIT_FATAL, reason="fatal error in a worker")
        elif not self.ready and not had_started:
            self.log_system_crit(f"{what} before its on_started callbacks completed; start-up failed")
            workers.forget_slot(slot)
            self.begin_stop(error=True, status=EXIT_FATAL, reason="start-up failed")
        elif quick and self.settings.core.respawn_limit and slot.quick_deaths >= self.settings.core.respawn_limit:
            self.log_system_crit(f"{what}: {CRASH_LOOP_MESSAGE}: worker {slot.slot_id} died "
                                 f"{slot.quick_deaths} times in a row within a second of its start")
            workers.forget_slot(slot)
            self.begin_stop(error=True, status=EXIT_FATAL, reason=CRASH_LOOP_MESSAGE)
        elif self.swapping_code():
            # The master holds the new generation's code now: the slot is
            # respawned on the old code if the new generation fails, dropped if it takes over.
            self.log_system_error(f"{what}; a new generation is starting: not respawned meanwhile")
            workers.schedule_respawn(slot, 0.0)
        else:
            outcome = workers.respawn_worker(slot, quick)
            (self.log_system_error if code != 0 else self.log_system_notice)(f"{what}; {outcome}")
            self.notifier.status(self.status_line())
        self.reloader.finish_reload_if_acknowledged()

    # --- stopping -----------------------------------------------------------

    def begin_stop(self, error: bool, status: int, reason: str) -> None:
        if self.stop_request is not None:
            return
        self.stop_request = StopRequest(error, status)
        self.log_system_notice(f"stopping ({reason})")
        self.notifier.stopping(f"stopping: {reason}")
        self.swapper.abort_check()
        for slot in self.workers.all_slots():
            if slot.alive and slot.state is not SlotState.STOPPING:
                self.workers.stop_worker(slot, error)
            elif not slot.alive:
                self.workers.forget_slot(slot)

    # --- reloading -------------------------------------------------------------

    def begin_reload(self, new_generation: bool = False) -> None:
        """HUP (and USR2, with `new_generation`): in place when the code is unchanged, else a swap."""
        self.reloader.reload_in_progress = True
        # Before start-up completes, systemd waits for the start's READY=1
        # alone: a reload then must not announce itself, nor report ready.
        if self.ready:
            self.notifier.reloading("reloading")
        try:
            new = load_settings(self.settings.path, self.overrides)
            privileges.check_identity(new)
        except ConfigError as error:
            self.log_system_error(f"reload refused, keeping the old configuration: {error.one_line()}")
            self.reloader.finish_reload(refused=RELOAD_REFUSED_CONFIG)
            return
        code = fingerprint.take(*self.code_paths)
        # Before start-up completes the upgrade waits: the next reload runs it.
        if self.ready and self.upgrade.core_upgraded(code):
            self.upgrade.begin_core_upgrade(new, code)
            return
        if self.ready and (new_generation or self.serving_handed_over() or self.fingerprint.code_differs(code)):
            reason = ("SIGUSR2: a new generation asked for" if new_generation else
                      "the generation from before the upgrade of oversipd serves: a new generation"
                      if self.serving_handed_over() else
                      f"module code changed ({fingerprint.changes(self.fingerprint, code).describe()})")
            self.swapper.begin_swap(new, code, reason, dependencies=new_generation)
            return
        self.reloader.reload_in_place(new)

    def status_line(self) -> str:
        running = sum(1 for s in self.workers.slots.values() if s.state in (SlotState.RUNNING, SlotState.RELOADING))
        line = (f"{running} of {self.target_workers} worker(s) running; {self.reloader.reloads} reload(s), "
                f"{self.workers.respawns} respawn(s)")
        degraded = [f"worker {s.slot_id} ({', '.join(s.degraded)})" for s in self.workers.slots.values()
                    if s.degraded and s.alive]
        if degraded:
            line += "; degraded: " + ", ".join(degraded)
        return line if self.generation == 1 else f"{line}; generation {self.generation}"

    def swapping_code(self) -> bool:
        """True while the master holds a new generation's code that does not serve yet (swap.py)."""
        return self.swapper.swapping_code()

    def serving_handed_over(self) -> bool:
        """True while the serving generation came across an exec (upgrade.py)."""
        return self.upgrade.serving_handed_over()

    # --- after the exec on an upgraded oversipd (upgrade.py, reexec.py) -------------------

    def adopt_handover(self, handover: Handover) -> None:
        """In the new image: the workers and counters of the old one; it was ready, and a swap starts."""
        self.upgrade.adopt_handover(handover)

    def run_after_exec(self, failure: str | None) -> int:
        """The new image's start: fork the next generation (unless importing its code failed), then serve."""
        self.install_signal_handlers()
        faulthandler.enable(all_threads=True)
        self.install_signal_stack()  # before any handler may run: signals pending across the exec come at once
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.handled_signals)  # blocked across the exec
        self.reap_workers()  # a worker that died just before the exec: its SIGCHLD went to the old image
        self.log_system_notice(f"running oversipd {oversipd.__version__} after the exec (pid {os.getpid()}); "
                               f"generation {self.generation} serves with {len(self.workers.slots)} worker(s) meanwhile")
        generation = self.generation + 1
        self.read_signals()  # one sent across the exec: a stop then forks nothing new
        if self.stop_request is not None:
            self.swapper.swap, self.reloader.reload_in_progress = None, False
        elif failure is not None:
            self.swapper.abandon_new_generation(f"generation {generation}: {failure}")
        else:
            gc.freeze()
            self.swapper.fork_generation(generation)
        return self.serve()
