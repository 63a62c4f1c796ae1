"""The master: one selector loop that turns signals and worker messages into actions.

Signal handlers do nothing but exist: `signal.set_wakeup_fd` writes one
byte per delivered signal to a pipe the loop reads, so every signal is
counted (two SIGTTINs are two workers) and handled as an ordinary event.
The loop sleeps in `select()` until a signal, a worker message or the
next deadline (respawn, worker_timeout, graceful stop, watchdog).

A reload that finds the module code changed (or SIGUSR2) swaps in a new
generation of workers instead of reloading in place: see "new
generations" below and generations.py.  One that finds oversipd itself
upgraded re-executes the master on the new core instead (reexec.py).
"""

from __future__ import annotations

import faulthandler
import functools
import gc
import os
import selectors
import signal
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import oversipd

from . import altstack, control, fingerprint, generations, kept, listeners, logger, privileges, process, reexec
from .control import Channel
from .errors import CRASH_LOOP_MESSAGE, EXIT_FATAL, EXIT_OK, WORKER_EXIT_FATAL, ConfigError, HaltServer
from .fingerprint import Fingerprint
from .generations import CodeSnapshot, Swap, SwapPhase
from .heartbeat import MAX_INTERVAL, HeartbeatBoard
from .kept import KeptDescriptors
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
IGNORED_SIGNALS = (signal.SIGWINCH, signal.SIGALRM, signal.SIGPIPE)
IGNORED_LOG_INTERVAL = 1.0  # seconds between two "ignoring SIGPIPE" lines
RELOAD_REFUSED_CONFIG = "reload rejected: invalid configuration; running on the old one"
RELOAD_REFUSED_CODE = "reload refused: the new module code failed its check"
NEW_GENERATION_FAILED = "generation {generation} stays in service"
HANDED_OVER_NOT_RESPAWNED = ("it ran the code of oversipd before the upgrade, which this master no longer "
                             "holds: not respawned (a HUP or SIGUSR2 starts a new generation)")


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
        self.slots: dict[int, WorkerSlot] = {}       # the serving generation, by slot
        # While a code reload starts a new generation: its workers, by slot.
        self.next_slots: dict[int, WorkerSlot] = {}
        # Workers of a generation on its way out (replaced, or failed to start): never respawned.
        self.leaving: list[WorkerSlot] = []
        self.generation = 1                          # the serving generation's number
        self.swap: Swap | None = None
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
        self.reload_in_progress = False
        self.reload_pending = False
        self.new_generation_pending = False  # a SIGUSR2 during a reload: the next one swaps generations
        self.awaiting_reload: set[int] = set()
        self.reloads = 0
        self.respawns = 0
        self.next_watchdog = time.monotonic() if self.notifier.watchdog_interval else None
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
        self.kept = KeptDescriptors()
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
        self.manage_workers()
        self.log_system_info(f"started {len(self.slots)} worker(s)")
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
        return self.stop_request is not None and not any(s.alive for s in self.all_slots())

    def wait_for_events(self) -> None:
        deadline = self.next_deadline()
        timeout = None if deadline is None else min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
        for key, _ in self.selector.select(timeout):
            key.data()

    def next_deadline(self) -> float | None:
        # No petting while stopping: STOPPING=1 was sent.
        deadlines = [self.next_watchdog] if self.next_watchdog is not None and self.stop_request is None else []
        deadlines += [self.slot_deadline(slot) for slot in self.all_slots()]
        if self.swap is not None and self.swap.check_deadline is not None:
            deadlines.append(self.swap.check_deadline)
        # inf marks a deadline already acted upon (SIGKILL sent): nothing more is due.
        return min((d for d in deadlines if d is not None and d != float("inf")), default=None)

    def slot_deadline(self, slot: WorkerSlot) -> float | None:
        """When the master must next look at `slot` (respawn, graceful_timeout, worker_timeout)."""
        if slot.state is SlotState.WAITING:
            # Not while a new generation starts: the master holds its code (see worker_exited).
            return None if self.swapping_code() else slot.respawn_at
        if not slot.alive:
            return None
        if slot.state is SlotState.STOPPING:
            return slot.stop_deadline
        if slot.abort_sent_at is not None:
            return slot.abort_sent_at + ABORT_GRACE
        if self.settings.core.worker_timeout and not slot.handed_over:
            return self.board.last_beat(slot.cell) + self.settings.core.worker_timeout
        return None

    def run_due_work(self, now: float) -> None:
        self.kill_overdue_stopping_workers(now)
        if self.stop_request is not None:
            return
        if not self.swapping_code():
            for slot in list(self.slots.values()):
                if slot.state is SlotState.WAITING and slot.respawn_at is not None and slot.respawn_at <= now:
                    self.spawn_worker(slot)
        self.murder_unresponsive_workers(now)
        if self.swap is not None and self.swap.check_deadline is not None and now >= self.swap.check_deadline:
            self.check_timed_out()
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
        if self.reload_in_progress:
            self.reload_pending = True  # any number of HUPs now: one more reload
            self.log_system_info("SIGHUP during a reload: another reload will follow")
            return
        self.begin_reload()

    def handle_usr2(self) -> None:
        """A reload that starts a new generation even when the fingerprint saw no change."""
        if self.stop_request is not None:
            return
        if self.reload_in_progress:
            self.reload_pending = self.new_generation_pending = True
            self.log_system_info("SIGUSR2 during a reload: a new generation will follow")
            return
        self.log_system_notice("SIGUSR2: reloading with a new generation of workers")
        self.begin_reload(new_generation=True)

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
            self.kept.release_orphans(slot.slot_id)

    def manage_workers(self) -> None:
        """Spawn or retire workers until the count matches target_workers."""
        if self.swapping_code():
            return  # the new generation is forked at the count wanted then; the rest follows the swap
        if self.serving_handed_over():
            return  # its workers run code this master no longer holds: a new generation replaces them
        active = sorted((s for s in self.slots.values() if not s.retiring), key=lambda s: s.slot_id)
        for slot in active[self.target_workers:]:
            self.retire_worker(slot)
        for _ in range(self.target_workers - len(active)):
            slot = WorkerSlot(self.free_slot_id(), self.generation)
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
        if self.sip_sockets is not None:
            self.sip_sockets.ensure_slot(slot.slot_id)  # its UDP SIP sockets, kept across respawns
        master_end, worker_end = Channel.pair()
        self.board.beat(slot.cell)
        adoptable = self.kept.orphans_of(slot.slot_id)
        adopted = {sock.fileno() for sock in adoptable.values()}
        inherited = [master_end.fileno(), *(fd for fd in self.masters_fds() if fd not in adopted)]
        # Block our signals across the fork: a signal landing in the child
        # before it resets its handlers would wake the master's pipe.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.handled_signals)
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
            worker_main(slot.slot_id, worker_end, self.settings, self.board, inherited, slot.generation)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker_end.close()
        slot.forked(pid, master_end)
        self.kept.hand_orphans(slot.slot_id, pid)
        self.selector.register(master_end.sock, selectors.EVENT_READ,
                               lambda: self.read_worker_messages(slot))
        return True

    def masters_fds(self) -> list[int]:
        """The master's own descriptors, which a forked child must close (PITFALLS: master death)."""
        check = [self.swap.check_fd] if self.swap is not None and self.swap.check_fd is not None else []
        return [self.signal_r, self.signal_w, self.selector.fileno(), *self.private_fds,
                *self.notifier.filenos(), *check, *(s.channel.fileno() for s in self.all_slots() if s.channel),
                *self.kept.filenos()]

    def release_unused_sip_sockets(self, slot_id: int) -> None:
        """A slot's UDP SIP sockets close once no worker of any generation holds that slot (what queued there is lost)."""
        if self.sip_sockets is not None and all(s.slot_id != slot_id for s in self.all_slots()):
            self.sip_sockets.release_slot(slot_id)

    def stop_worker(self, slot: WorkerSlot, error: bool, retire: bool = False) -> None:
        """Ask a worker to stop (`retire`: a newer generation took over); SIGKILL after graceful_timeout."""
        slot.transition(SlotState.STOPPING, "asked to retire" if retire else "asked to stop")
        slot.stop_deadline = time.monotonic() + self.settings.core.graceful_timeout
        self.awaiting_reload.discard(slot.slot_id)
        message = (control.RETIRE, None) if retire else (control.STOP, error)
        if slot.channel is None or not slot.channel.send(*message):
            self.signal_worker(slot, signal.SIGTERM)

    def signal_worker(self, slot: WorkerSlot, signum: int) -> None:
        try:
            os.kill(slot.pid, signum)
        except ProcessLookupError:
            pass  # already dead; SIGCHLD is on its way

    def read_worker_messages(self, slot: WorkerSlot, last_words: bool = False) -> None:
        """What the worker says; `last_words`: it is dead, only what it kept or released still counts."""
        messages = slot.channel.receive() if slot.channel else None
        if messages is None:  # EOF: the worker is exiting; SIGCHLD will tell how
            self.unregister_channel(slot)
            return
        for kind, argument, sock in messages:
            if kind == control.KEEP:
                self.keep_connection(slot, argument, sock)
            elif kind == control.RELEASE:
                self.kept.release(slot.pid, argument)
            elif kind == control.HAND_OVER:
                self.hand_over_connection(slot, *argument)
            elif last_words:
                continue
            elif kind == control.STARTED:
                self.worker_started(slot)
            elif kind == control.RELOADED:
                self.worker_reloaded(slot)

    def keep_connection(self, slot: WorkerSlot, key: Any, sock: socket.socket | None) -> None:
        """A worker's duplicate of a client connection (oversipd.kept); none came if we are out of descriptors."""
        if sock is not None:
            self.kept.keep(slot.pid, key, sock)
        elif not self.kept.warned_full:
            self.kept.warned_full = True
            self.log_system_warn("out of file descriptors: a client connection is not kept, and will not "
                                 "outlive its worker (raise LimitNOFILE)")

    def hand_over_connection(self, slot: WorkerSlot, key: Any, unread: bytes) -> None:
        """A retiring worker's kept connection goes to its slot's worker of the serving generation."""
        successor = self.slots.get(slot.slot_id)
        if successor is None or successor is slot or not successor.alive or successor.channel is None \
                or successor.state is SlotState.STOPPING:
            self.kept.release(slot.pid, key)   # it ends when the retiring worker exits
            return
        sock = self.kept.transfer(slot.pid, key, successor.pid)
        if sock is not None and not successor.channel.send(control.ADOPT, (key, unread), fd=sock.fileno()):
            self.kept.release(successor.pid, key)

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
        if self.next_slots.get(slot.slot_id) is slot:
            self.new_generation_progressed()
            return
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
            if self.swap is not None and pid == self.swap.check_pid:
                self.swap.check_status = status
                self.conclude_check()
                continue
            slot = next((s for s in self.all_slots() if s.pid == pid), None)
            if slot is not None:
                self.worker_exited(slot, status)

    def worker_exited(self, slot: WorkerSlot, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        what = f"{slot.label} {how}"
        had_started = slot.started_at is not None
        in_next_generation = self.next_slots.get(slot.slot_id) is slot
        self.read_worker_messages(slot, last_words=True)   # the connections it released before dying
        self.kept.orphan(slot.pid, slot.slot_id)
        self.unregister_channel(slot)
        quick = slot.died(time.monotonic())
        self.awaiting_reload.discard(slot.slot_id)
        if self.stop_request is not None or slot.retiring or slot in self.leaving:
            self.log_system_info(what)
            self.forget_slot(slot)
            self.finish_swap_if_old_generation_gone()
        elif slot.handed_over:
            self.handed_over_worker_exited(slot, what)
        elif in_next_generation:
            # An exception to Launcher.fatal's "whole daemon down": the new
            # generation alone failed, and the old one still serves.
            cause = "Launcher.fatal was called" if code == WORKER_EXIT_FATAL else "died"
            self.forget_slot(slot)
            self.abandon_new_generation(f"{what}: {cause} before its generation took over")
        elif code == WORKER_EXIT_FATAL:
            self.log_system_crit(f"{what}: Launcher.fatal was called; stopping the daemon")
            self.forget_slot(slot)
            self.begin_stop(error=True, status=EXIT_FATAL, reason="fatal error in a worker")
        elif not self.ready and not had_started:
            self.log_system_crit(f"{what} before its on_started callbacks completed; start-up failed")
            self.forget_slot(slot)
            self.begin_stop(error=True, status=EXIT_FATAL, reason="start-up failed")
        elif quick and self.settings.core.respawn_limit and slot.quick_deaths >= self.settings.core.respawn_limit:
            self.log_system_crit(f"{what}: {CRASH_LOOP_MESSAGE}: worker {slot.slot_id} died "
                                 f"{slot.quick_deaths} times in a row within a second of its start")
            self.forget_slot(slot)
            self.begin_stop(error=True, status=EXIT_FATAL, reason=CRASH_LOOP_MESSAGE)
        elif self.swapping_code():
            # The master holds the new generation's code now: the slot is
            # respawned on the old code if the new generation fails, dropped if it takes over.
            self.log_system_error(f"{what}; a new generation is starting: not respawned meanwhile")
            self.schedule_respawn(slot, 0.0)
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

    def silence(self, slot: WorkerSlot, now: float) -> float:
        """Seconds since the worker of `slot` last beat its heartbeat cell."""
        return now - self.board.last_beat(slot.cell)

    def murder_unresponsive_workers(self, now: float) -> None:
        """SIGABRT (faulthandler prints the traceback) a stuck reactor, then SIGKILL it."""
        timeout = self.settings.core.worker_timeout
        for slot in self.all_slots():
            if not slot.alive or slot.state is SlotState.STOPPING or slot.handed_over:
                continue
            if slot.abort_sent_at is not None:
                if now >= slot.abort_sent_at + ABORT_GRACE:
                    self.log_system_crit(f"{slot.label} survived SIGABRT; SIGKILL")
                    self.signal_worker(slot, signal.SIGKILL)
                    slot.abort_sent_at = float("inf")
            elif timeout and (silence := self.silence(slot, now)) >= timeout:
                self.log_system_crit(f"{slot.label}: reactor unresponsive "
                                     f"for {timeout:g} s (worker_timeout); sending SIGABRT "
                                     f"(last heartbeat {silence:.3f} s ago)")
                self.signal_worker(slot, signal.SIGABRT)
                slot.abort_sent_at = now

    def kill_overdue_stopping_workers(self, now: float) -> None:
        """graceful_timeout after a worker was asked to stop (daemon stop, TTOU, fewer `workers`): SIGKILL."""
        for slot in self.all_slots():
            if slot.alive and slot.stop_deadline is not None and now >= slot.stop_deadline:
                self.log_system_warn(f"{slot.label} still running after "
                                     "graceful_timeout; SIGKILL")
                self.signal_worker(slot, signal.SIGKILL)
                slot.stop_deadline = None

    def pet_watchdog(self, now: float) -> None:
        """WATCHDOG=1 only while every worker's reactor answers its heartbeat."""
        interval = self.notifier.watchdog_interval or 1.0
        self.next_watchdog = now + interval
        limit = HEARTBEAT_MISSES * self.board.interval(self.settings.core.worker_timeout)
        silent = [s for s in self.live_slots() if not s.handed_over and self.silence(s, now) >= limit]
        if not silent:
            self.notifier.watchdog()
            return
        for slot in silent:
            self.log_system_warn(f"{slot.label} missed its heartbeat for "
                                 f"{self.silence(slot, now):.1f} s: systemd watchdog not petted")

    # --- stopping -----------------------------------------------------------

    def begin_stop(self, error: bool, status: int, reason: str) -> None:
        if self.stop_request is not None:
            return
        self.stop_request = StopRequest(error, status)
        self.log_system_notice(f"stopping ({reason})")
        self.notifier.stopping(f"stopping: {reason}")
        self.abort_check()
        for slot in self.all_slots():
            if slot.alive and slot.state is not SlotState.STOPPING:
                self.stop_worker(slot, error)
            elif not slot.alive:
                self.forget_slot(slot)

    # --- reloading -------------------------------------------------------------

    def begin_reload(self, new_generation: bool = False) -> None:
        """HUP (and USR2, with `new_generation`): in place when the code is unchanged, else a swap."""
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
            self.finish_reload(refused=RELOAD_REFUSED_CONFIG)
            return
        code = fingerprint.take(*self.code_paths)
        # Before start-up completes the upgrade waits: the next reload runs it.
        if self.ready and self.core_upgraded(code):
            self.begin_core_upgrade(new, code)
            return
        if self.ready and (new_generation or self.serving_handed_over() or self.fingerprint.code_differs(code)):
            reason = ("SIGUSR2: a new generation asked for" if new_generation else
                      "the generation from before the upgrade of oversipd serves: a new generation"
                      if self.serving_handed_over() else
                      f"module code changed ({fingerprint.changes(self.fingerprint, code).describe()})")
            self.begin_swap(new, code, reason, dependencies=new_generation)
            return
        self.reload_in_place(new)

    def reload_in_place(self, new: Settings) -> None:
        """The code is unchanged: every worker runs its on_reload callbacks with the new settings."""
        self.apply_settings(new)
        self.awaiting_reload = set()
        for slot in self.live_slots():
            if slot.channel.send(control.RELOAD, new):
                self.awaiting_reload.add(slot.slot_id)
                if slot.state is SlotState.RUNNING:
                    slot.transition(SlotState.RELOADING, "SIGHUP")
        self.reloads += 1
        self.finish_reload_if_acknowledged()

    def core_upgraded(self, code: Fingerprint) -> bool:
        return code.core_version is not None and code.core_version != self.fingerprint.core_version

    def apply_settings(self, new: Settings) -> None:
        old, self.settings = self.settings, new
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
            for slot in self.live_slots():
                self.board.beat(slot.cell)
        if new.workers_in_file != old.workers_in_file:
            self.target_workers = new.core.workers
        self.manage_workers()

    def worker_reloaded(self, slot: WorkerSlot) -> None:
        if slot.state is SlotState.RELOADING:
            slot.transition(SlotState.RUNNING, "on_reload done")
        self.awaiting_reload.discard(slot.slot_id)
        self.finish_reload_if_acknowledged()

    def finish_reload_if_acknowledged(self) -> None:
        if self.reload_in_progress and self.swap is None and not self.awaiting_reload:
            self.log_system_info("reload done: every worker ran its on_reload callbacks")
            self.finish_reload()

    def finish_reload(self, refused: str | None = None) -> None:
        """READY=1 (with a STATUS= saying why when `refused`); then the reload that HUPs asked for meanwhile."""
        self.reload_in_progress = False
        if self.ready:
            self.notifier.ready(refused or self.status_line())
        if self.reload_pending and self.stop_request is None:
            self.reload_pending = False
            new_generation, self.new_generation_pending = self.new_generation_pending, False
            self.begin_reload(new_generation)

    def status_line(self) -> str:
        running = sum(1 for s in self.slots.values() if s.state in (SlotState.RUNNING, SlotState.RELOADING))
        line = f"{running} of {self.target_workers} worker(s) running; {self.reloads} reload(s), {self.respawns} respawn(s)"
        return line if self.generation == 1 else f"{line}; generation {self.generation}"

    # --- new generations (SPEC §5, "Code changes on reload"; generations.py) -----------

    def swapping_code(self) -> bool:
        """True while the master holds a new generation's code that does not serve yet."""
        return self.swap is not None and self.swap.phase is SwapPhase.STARTING

    def begin_swap(self, new: Settings, code: Fingerprint, reason: str, dependencies: bool) -> None:
        """Check the new code in a throw-away child; the old generation serves on meanwhile."""
        self.log_system_notice(f"{reason}: checking the new code in a throw-away child")
        kept = generations.kept_dependencies() if dependencies else []
        if kept:
            self.log_system_notice(f"not imported anew, a C extension is among them (a restart upgrades them): "
                                   f"{', '.join(kept)}")
        swap = Swap(settings=new, reason=reason, dependencies=dependencies, fingerprint=code)
        self.start_swap_check(swap, lambda: generations.start_check(
            *self.code_paths, self.insecure_modules, dependencies, self.masters_fds()))

    def start_swap_check(self, swap: Swap, start_check: Callable[[], tuple[int, int]]) -> None:
        """Fork the swap's check child with `start_check` and wait on its answer (a failed fork refuses it)."""
        try:
            swap.check_pid, swap.check_fd = start_check()
        except OSError as error:
            self.refuse_swap(f"cannot fork the check: {error}")
            return
        swap.check_deadline = time.monotonic() + generations.CHECK_TIMEOUT
        self.swap = swap
        self.selector.register(swap.check_fd, selectors.EVENT_READ, self.read_check_result)

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
                self.exec_new_core()
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
        self.selector.unregister(swap.check_fd)
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
        if self.stop_request is not None:
            self.swap = None

    def refuse_swap(self, why: str) -> None:
        """The new code failed its check: nothing changes; the old generation serves on the old config."""
        self.swap = None
        self.log_system_error(f"{RELOAD_REFUSED_CODE}: {why}")
        self.finish_reload(refused=f"{RELOAD_REFUSED_CODE}; generation {self.generation} serves on")

    def start_new_generation(self) -> None:
        """Import the new code in the master, run on_initialize, fork the new generation."""
        swap = self.swap
        assert swap is not None
        swap.phase = SwapPhase.STARTING
        swap.snapshot, swap.old_settings, swap.old_target = CodeSnapshot.take(), self.settings, self.target_workers
        generation = process.generation = self.generation + 1  # what the new code sees in on_initialize
        self.log_code_changes(swap.fingerprint)
        self.apply_settings(swap.settings)
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
        for slot_id in range(1, self.target_workers + 1):
            slot = self.next_slots[slot_id] = WorkerSlot(slot_id, generation)
            if not self.spawn_worker(slot):
                self.forget_slot(slot)
                self.abandon_new_generation(f"generation {generation}: cannot fork its workers")
                return
        self.log_system_info(f"generation {generation}: {len(self.next_slots)} worker(s) forked")

    def call_new_on_initialize(self) -> None:
        with generations.running_module_code():
            call_on_initialize()

    def import_new_code(self) -> None:
        assert self.swap is not None
        generations.import_module_code(*self.code_paths, self.insecure_modules, self.swap.dependencies)

    def log_code_changes(self, code: Fingerprint) -> None:
        changes = fingerprint.changes(self.fingerprint, code)
        for name in changes.removed:
            self.log_system_notice(f"module {name} unloaded: {self.fingerprint.drop_ins[name]} was removed")
        for name in changes.added:
            self.log_system_notice(f"module {name} loaded: {code.drop_ins[name]} was added")
        for path in changes.edited:
            self.log_system_notice(f"{path} changed: imported again")

    def new_generation_progressed(self) -> None:
        """A new worker ran on_started; once all did, the new generation serves and the old one retires."""
        if any(s.state is not SlotState.RUNNING for s in self.next_slots.values()):
            return
        swap = self.swap
        assert swap is not None
        old, self.slots, self.next_slots = self.slots, self.next_slots, {}
        self.generation += 1
        self.fingerprint = swap.fingerprint
        swap.phase, swap.snapshot = SwapPhase.RETIRING, None  # the old code is not needed any more
        self.log_system_notice(f"generation {self.generation} serves with {len(self.slots)} worker(s); "
                               f"generation {self.generation - 1} retires")
        for slot in old.values():
            if slot.alive and slot.state is not SlotState.STOPPING:
                self.stop_worker(slot, error=False, retire=True)
            if slot.alive:
                self.leaving.append(slot)
        self.manage_workers()  # a TTIN or TTOU during the swap
        self.finish_swap_if_old_generation_gone()

    def finish_swap_if_old_generation_gone(self) -> None:
        """The swap ends (READY=1) once the generation that does not serve has left."""
        swap = self.swap
        if swap is None or swap.phase is not SwapPhase.RETIRING:
            return
        if any(s.generation != self.generation for s in self.leaving):
            return
        self.swap = None
        if swap.failure is not None:
            self.finish_reload(refused=f"reload failed: the new generation did not start; "
                                       f"generation {self.generation} serves on")
            return
        self.reloads += 1
        self.log_system_info(f"reload done: generation {self.generation} serves, the old generation is gone")
        self.finish_reload()

    def abandon_new_generation(self, why: str) -> None:
        """The new generation failed to start: stop its workers, put the old code back; the daemon stays up."""
        swap = self.swap
        assert swap is not None
        self.log_system_crit(f"{why}; {NEW_GENERATION_FAILED.format(generation=self.generation)}")
        for slot in list(self.next_slots.values()):
            if slot.alive:
                self.stop_worker(slot, error=True)
                self.leaving.append(slot)
        self.next_slots = {}
        if swap.snapshot is None:  # after an exec: the old code is gone (README, "Code reloads")
            self.keep_handed_over_generation(swap, why)
            return
        swap.snapshot.restore()
        process.generation = self.generation
        gc.freeze()
        self.settings = swap.old_settings
        oversipd.config = self.settings
        logger.set_level(self.settings.core.log_level)
        self.target_workers = swap.old_target
        swap.phase, swap.snapshot, swap.failure = SwapPhase.RETIRING, None, why
        self.manage_workers()  # an old worker that died meanwhile is respawned (at its time) on the old code
        self.finish_swap_if_old_generation_gone()

    # --- an upgraded oversipd: exec on the new core (reexec.py) -------------------------------

    def serving_handed_over(self) -> bool:
        """True while the serving generation came across an exec (its code is gone from the master)."""
        return any(slot.handed_over for slot in self.slots.values())

    def begin_core_upgrade(self, new: Settings, code: Fingerprint) -> None:
        """Check the installed core with its own `oversipd check`; the old generation serves on meanwhile."""
        self.log_system_notice(f"oversipd {code.core_version} is installed, this master runs "
                               f"{self.fingerprint.core_version}: checking it with its own `oversipd check`")
        swap = Swap(settings=new, reason=f"oversipd upgraded to {code.core_version}", fingerprint=code,
                    core_upgrade=True)
        argv = reexec.check_command(new.path, self.overrides.modules_dir, self.insecure_modules)
        self.start_swap_check(swap, lambda: reexec.start_check(argv, self.masters_fds()))

    def exec_new_core(self) -> None:
        """Hand over what must outlive this image, then become the installed oversipd (same PID)."""
        swap = self.swap
        assert swap is not None
        handover = self.collect_handover(swap.reason, swap.fingerprint.core_version)
        self.log_system_notice(f"{swap.reason}: re-executing the master on it, pid {os.getpid()} unchanged; "
                               f"{len(handover.workers)} worker(s) of generation {self.generation} serve meanwhile")
        try:
            reexec.exec_new_core(handover, self.handled_signals, self.signal_r)
        except OSError as error:
            self.refuse_swap(f"cannot execute {reexec.INTERPRETER[0]}: {error.strerror or error}")

    def collect_handover(self, reason: str, core_version: str | None) -> reexec.Handover:
        parts, fds = reexec.collect_parts()
        workers = [reexec.HandedWorker(slot.slot_id, slot.pid, slot.generation, slot.channel.fileno(),
                                       stopping=slot.state is SlotState.STOPPING)
                   for slot in self.all_slots() if slot.alive and slot.channel is not None]
        pid_fd = self.private_fds[0] if self.private_fds and self.settings.core.pid_file else None
        pid_file = {"path": str(self.settings.core.pid_file), "fd": pid_fd} if pid_fd is not None else None
        fds += [worker.fd for worker in workers] + ([pid_fd] if pid_fd is not None else [])
        return reexec.Handover(argv=self.argv, conf=str(self.settings.path), overrides=asdict(self.overrides),
                               insecure_modules=self.insecure_modules,
                               generation=self.generation, target_workers=self.target_workers,
                               reloads=self.reloads, respawns=self.respawns, daemonized=self.daemonized,
                               reason=reason, core_version=core_version, reload_pending=self.reload_pending,
                               new_generation_pending=self.new_generation_pending, pid_file=pid_file, workers=workers, parts=parts, fds=fds)

    def adopt_handover(self, handover: reexec.Handover) -> None:
        """In the new image: the workers and counters of the old one; it was ready, and a swap starts."""
        if handover.core_version != oversipd.__version__:
            self.log_system_warn(f"the installed metadata says oversipd {handover.core_version}, "
                                 f"the code imported is {oversipd.__version__}: reinstall oversipd")
        # Compared with at the next reload: the same metadata must not re-execute again.
        self.fingerprint = Fingerprint(self.fingerprint.files, self.fingerprint.drop_ins, handover.core_version)
        self.generation, self.target_workers = handover.generation, handover.target_workers
        self.reloads, self.respawns = handover.reloads, handover.respawns
        self.reload_pending, self.new_generation_pending = handover.reload_pending, handover.new_generation_pending
        now = time.monotonic()
        for handed in handover.workers:
            slot = WorkerSlot(handed.slot, handed.generation, handed_over=True)
            channel = Channel(socket.socket(fileno=reexec.adopt_fd(handed.fd)))
            slot.pid, slot.channel = handed.pid, channel
            slot.forked_at = slot.started_at = now - 1.0  # not a quick death, whatever happens
            slot.transition(SlotState.RUNNING, "handed over across the exec")
            self.selector.register(channel.sock, selectors.EVENT_READ,
                                   functools.partial(self.read_worker_messages, slot))
            if handed.stopping or handed.generation != handover.generation:
                slot.transition(SlotState.STOPPING, "was stopping before the exec")
                slot.stop_deadline = now + self.settings.core.graceful_timeout
                self.leaving.append(slot)
            else:
                self.slots[slot.slot_id] = slot
        self.ready = True
        self.swap = Swap(settings=self.settings, reason=handover.reason, phase=SwapPhase.STARTING,
                         fingerprint=self.fingerprint, core_upgrade=True)
        self.reload_in_progress = True

    def run_after_exec(self, failure: str | None) -> int:
        """The new image's start: fork the next generation (unless importing its code failed), then serve."""
        self.install_signal_handlers()
        faulthandler.enable(all_threads=True)
        self.install_signal_stack()  # before any handler may run: signals pending across the exec come at once
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.handled_signals)  # blocked across the exec
        self.reap_workers()  # a worker that died just before the exec: its SIGCHLD went to the old image
        self.log_system_notice(f"running oversipd {oversipd.__version__} after the exec (pid {os.getpid()}); "
                               f"generation {self.generation} serves with {len(self.slots)} worker(s) meanwhile")
        generation = self.generation + 1
        self.read_signals()  # one sent across the exec: a stop then forks nothing new
        if self.stop_request is not None:
            self.swap, self.reload_in_progress = None, False
        elif failure is not None:
            self.abandon_new_generation(f"generation {generation}: {failure}")
        else:
            gc.freeze()
            self.fork_generation(generation)
        return self.serve()

    def keep_handed_over_generation(self, swap: Swap, why: str) -> None:
        """The first generation on the upgraded core failed: the handed-over one serves on, not respawned."""
        process.generation = self.generation
        self.log_system_crit(f"the workers of generation {self.generation} {HANDED_OVER_NOT_RESPAWNED}")
        swap.phase, swap.failure = SwapPhase.RETIRING, why
        self.stop_if_no_worker_left()
        self.finish_swap_if_old_generation_gone()

    def handed_over_worker_exited(self, slot: WorkerSlot, what: str) -> None:
        self.forget_slot(slot)
        self.log_system_error(f"{what}; {HANDED_OVER_NOT_RESPAWNED}")
        if not self.swapping_code():
            self.stop_if_no_worker_left()

    def stop_if_no_worker_left(self) -> None:
        if not any(slot.alive for slot in (*self.slots.values(), *self.next_slots.values())):
            self.log_system_crit("no worker left: the generation on the upgraded oversipd did not start "
                                 "and the one from before cannot be respawned")
            self.begin_stop(error=True, status=EXIT_FATAL, reason="no worker left after the upgrade")
