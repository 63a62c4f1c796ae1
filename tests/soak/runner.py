"""The soak run: its state, the step loop, and the invariants checked after every step."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from oversipd.testing import Daemon

from listen_helpers import free_port

from . import observe
from .calls import CallStream, Verdict, Window, end_call_stream, in_window
from .probe import MODULES, SERVER_SCRIPT
from .sip_probe import SIP_HANDLER, SipProbe, sip_tables
from .store import SoakStore

MIN_WORKERS, MAX_WORKERS = 2, 4
WORKER_TIMEOUT = 2.0          # small, so a SIGSTOP can trip it
GRACEFUL_TIMEOUT = 2.0        # small, so a hung on_terminated is killed soon
CONVERGE_TIMEOUT = 40.0       # the respawn back-off alone reaches 5 s
EVENT_TIMEOUT = 20.0
RSS_WARMUP_CHECKS = 5         # imports and caches settle in the first steps of a master
RSS_TOLERANCE = 2 << 20       # bytes a master may grow after its warm-up
# What the master holds for each worker slot: its control channel, and the
# slot's own UDP and TCP sockets of the SIP listeners (oversipd.sip.transport.sockets;
# slot 1 uses the [listen.*] sockets themselves: a constant the baseline absorbs).
PER_SLOT_FDS = 3


class Violation(Exception):
    """An invariant did not hold."""


@dataclass
class Lifetime:
    """One master, from its start to its exit."""

    master_pid: int
    log_from: int
    events_from: int
    notifications_from: int
    pids: set[int] = field(default_factory=set)         # every worker seen
    settled: set[int] = field(default_factory=set)      # dead workers already checked
    error_pids: set[int] = field(default_factory=set)   # their on_terminated must get error=True
    fatal_injected: bool = False
    master_killed: bool = False
    fds_per_master: int | None = None                   # open fds minus one channel per worker
    rss: list[int] = field(default_factory=list)
    checks: int = 0


@dataclass(frozen=True)
class MasterSample:
    """The master's resources, read at one settled instant (Soak.settled_sample)."""

    extra: int   # open fds minus what each worker slot has in the master (PER_SLOT_FDS) and kept connections
    fds: int
    rss: int


class Soak:
    """A seeded sequence of faults against one daemon directory."""

    def __init__(self, seed: int, seconds: float, directory: Path,
                 say: Callable[[str], None] = print, trace: bool = False, sip_load: bool = True) -> None:
        self.seed = seed
        self.trace = trace  # say each step as it starts
        self.seconds = seconds
        self.directory = directory
        self.say = say
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.checks: Counter[str] = Counter()
        self.exception_kinds: Counter[str] = Counter()
        self.step = 0
        self.fault_name = "start"
        self.lifetimes = 0
        self.flags = directory / "flags"
        self.flags.mkdir(mode=0o755, exist_ok=True)
        self.file_workers = self.rng.randint(MIN_WORKERS, MAX_WORKERS)
        self.target = self.file_workers
        (directory / "daemon").mkdir(mode=0o755)
        self.pid_file = directory / "daemon" / "oversipd.pid"   # `oversipd status` and its SIP counters
        port = free_port("tcp", "udp")
        self.sip = SipProbe(port)
        # The SIP load: a store that comes and goes, a call stream through every fault.
        self.store = SoakStore(directory / "pg") if sip_load else None
        self.calls = CallStream(directory / "calls", port) if sip_load else None
        self.windows: list[Window] = []   # each step in wall-clock time: what the calls are judged by
        self.verdict: Verdict | None = None
        self.drained_in: float | None = None
        self.daemon = Daemon(directory / "daemon", modules=dict(MODULES), server_script=SERVER_SCRIPT + SIP_HANDLER,
                             core=self.core_settings(), settings={"soak": {"flags": str(self.flags)}},
                             extra_tables=sip_tables(port, self.store.url if self.store else None))
        self.lifetime: Lifetime | None = None
        self.rss_growth: list[int] = []
        self.generation = 0   # [modules.soak] generation: which file a reload applied
        self.max_fds = 0
        self.last_sigpipe = float("-inf")  # SIGPIPE is logged at most once a second

    def core_settings(self) -> dict[str, Any]:
        # respawn_limit = 0: SIGKILLs of young workers are quick deaths, and
        # the campaign wants the count to converge, not the daemon to give up.
        return {"workers": self.file_workers, "log_level": os.environ.get("SOAK_LOG_LEVEL", "info"), "worker_timeout": WORKER_TIMEOUT,
                "graceful_timeout": GRACEFUL_TIMEOUT, "respawn_limit": 0, "pid_file": str(self.pid_file)}

    # --- bookkeeping ------------------------------------------------------------

    def injected(self, fault: str) -> None:
        self.faults[fault] += 1

    def checked(self, invariant: str) -> None:
        self.checks[invariant] += 1

    @staticmethod
    def violation(text: str) -> Violation:
        return Violation(text)

    # --- the daemon's log and events (this master's only) --------------------------

    def mark(self) -> tuple[int, int]:
        """(events, log lines) so far: what happens after a fault is what follows."""
        with self.daemon.events.changed:
            events = len(self.daemon.events.items)
        with self.daemon.log.changed:
            return events, len(self.daemon.log.items)

    def log_lines(self, start: int | None = None) -> list[str]:
        with self.daemon.log.changed:
            return list(self.daemon.log.items[self.lifetime.log_from if start is None else start:])

    def events(self, name: str | None = None, start: int | None = None, **match: Any) -> list[dict[str, Any]]:
        with self.daemon.events.changed:
            items = list(self.daemon.events.items[self.lifetime.events_from if start is None else start:])
        return [e for e in items if (name is None or e["event"] == name)
                and all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, probe: Callable[[], Any], what: str, timeout: float = EVENT_TIMEOUT) -> Any:
        """Wait until `probe()` is true; a timeout is a violation naming `what`."""
        result = observe.poll_until(probe, timeout)
        if not result:
            raise self.violation(f"timed out after {timeout:g} s waiting for {what}")
        return result

    def wait_log(self, text: str, start: int, what: str, count: int = 1) -> list[str]:
        return self.wait_for(lambda: (found := [l for l in self.log_lines(start) if text in l])
                             and len(found) >= count and found, what)

    def write_conf(self, content: bytes | None = None) -> None:
        """Replace the configuration file (by default a valid one, with a new generation) atomically.

        Atomically: a reload in progress may be reading the file.
        """
        real = self.daemon.conf_path
        new = real.with_name(real.name + ".new")
        if content is None:
            self.generation += 1
            self.daemon.settings["soak"]["generation"] = self.generation
            self.daemon.conf_path = new
            try:
                self.daemon.write_conf()
            finally:
                self.daemon.conf_path = real
        else:
            new.write_bytes(content)
        os.replace(new, real)

    # --- processes -------------------------------------------------------------------

    def workers(self) -> observe.Workers:
        return observe.observe_workers(self.lifetime.master_pid)

    def master_alive(self) -> bool:
        return self.daemon.process is not None and self.daemon.process.poll() is None

    def require_master(self) -> None:
        if not self.master_alive():
            raise self.violation(f"the master exited with status {self.daemon.process.returncode} "
                                 "without being asked to")

    def signal_master(self, signum: int) -> None:
        self.require_master()
        self.daemon.signal(signum)

    def signal_worker(self, pid: int, signum: int) -> bool:
        try:
            os.kill(pid, signum)
            return True
        except ProcessLookupError:
            return False

    # --- lifetimes: start, end --------------------------------------------------------

    def start_daemon(self, wait: bool = True) -> None:
        events, lines = self.mark()
        with self.daemon.notifications.changed:
            notifications = len(self.daemon.notifications.items)
        self.daemon.start(wait=False)
        self.lifetime = Lifetime(self.daemon.pid, lines, events, notifications)
        self.lifetimes += 1
        self.target = self.file_workers
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """The new master's READY=1 (each one carries MAINPID)."""
        pid = self.daemon.pid
        self.wait_for(lambda: self.require_master() or any(
            f"MAINPID={pid}" in line for line in self.notifications(self.lifetime.notifications_from)),
            "READY=1 from a new master")
        self.checked("the daemon starts and reports READY=1")

    def notifications(self, start: int = 0) -> list[str]:
        """sd_notify lines, one list entry per line, from the `start`th message on."""
        with self.daemon.notifications.changed:
            return [line for message in self.daemon.notifications.items[start:] for line in message]

    def end_lifetime(self, expected_status: int) -> None:
        """The master is going away: check its exit, orphans, every worker's end, fds and RSS."""
        try:
            status = self.daemon.wait_exit(GRACEFUL_TIMEOUT + CONVERGE_TIMEOUT)
        except Exception:
            raise self.violation("the master did not exit") from None
        if status != expected_status:
            raise self.violation(f"the master exited with status {status}, expected {expected_status}")
        self.checked("the master's exit status is the documented one")
        self.check_no_orphans()
        for pid in self.known_worker_pids():
            self.settle(pid)
        self.check_log()
        self.check_rss_flat()

    def known_worker_pids(self) -> set[int]:
        life = self.lifetime
        from_events = {e["pid"] for e in self.events("started") if e.get("ppid") == life.master_pid}
        from_log = set(observe.worker_deaths(self.log_lines()))
        life.pids |= from_events | from_log
        return set(life.pids)

    def check_no_orphans(self) -> None:
        pids = self.known_worker_pids()
        group = self.lifetime.master_pid  # the daemon runs in its own session and process group

        def survivors() -> list[int]:
            left = [pid for pid in pids if observe.is_running(pid)]
            for proc in psutil.process_iter():
                try:
                    if os.getpgid(proc.pid) == group and observe.is_running(proc.pid):
                        left.append(proc.pid)
                except (ProcessLookupError, PermissionError):
                    pass
            return sorted(set(left))

        observe.poll_until(lambda: not survivors(), EVENT_TIMEOUT)
        left = survivors()
        if left:
            raise self.violation(f"process(es) {left} survived the master {self.lifetime.master_pid}")
        self.checked("no process survives the master")

    # --- the checks after every step ---------------------------------------------------

    def check_step(self) -> None:
        self.require_master()
        workers = self.converge()
        self.lifetime.pids |= workers.pids
        for pid in self.known_worker_pids() - workers.pids - self.lifetime.settled:
            if not observe.is_running(pid):
                self.settle(pid)
        self.check_log()
        self.sip.check(self)
        self.check_master_resources()
        self.lifetime.checks += 1

    def converge(self) -> observe.Workers:
        """Wait until exactly `target` workers run, in slots 1..target, each past on_started."""
        def settled() -> observe.Workers | None:
            self.require_master()
            workers = self.workers()
            return workers if self.converged(workers) else None

        workers = observe.poll_until(settled, CONVERGE_TIMEOUT)
        if not workers:
            raise self.violation(f"the worker count did not converge to {self.target} within "
                                 f"{CONVERGE_TIMEOUT:g} s: {self.workers()}")
        self.checked("live worker count converges to the configured count")
        return workers

    def converged(self, workers: observe.Workers) -> bool:
        """Exactly `target` titled workers in slots 1..target, none leaving, each past on_started."""
        if (sorted(workers.slots) != list(range(1, self.target + 1)) or workers.duplicates
                or workers.untitled or workers.zombies or workers.stopped):
            return False
        return workers.pids <= {e["pid"] for e in self.events("ready")}

    def settle(self, pid: int) -> None:
        """A dead worker: exactly one on_terminated, or a kill the master logged."""
        life = self.lifetime
        if pid in life.settled:
            return

        def how_it_ended() -> tuple[list[dict[str, Any]], observe.Death | None] | None:
            terminated = self.events("terminated", pid=pid)
            death = observe.worker_deaths(self.log_lines()).get(pid)
            if life.master_killed:
                return (terminated, None) if terminated else None
            if death is None:
                return None
            if death.status == 0 and not terminated:
                return None  # the event may still be on its way
            return terminated, death

        ended = observe.poll_until(how_it_ended, EVENT_TIMEOUT) or how_it_ended()
        if ended is None:
            what = "its on_terminated" if life.master_killed else "the master's log line about its end"
            raise self.violation(f"worker pid {pid} is gone but {what} never came")
        terminated, death = ended
        if len(terminated) > 1:
            raise self.violation(f"worker pid {pid} ran on_terminated {len(terminated)} times")
        if death is not None and death.status is not None:
            if death.status == 1:
                raise self.violation(f"worker pid {pid} exited with status 1: an exception escaped its reactor")
            if death.status == 3 and not life.fatal_injected:
                raise self.violation(f"worker pid {pid} called Launcher.fatal, which nobody injected")
        self.checked("every worker's end is logged by the master")
        ran_started = bool(self.events("started", pid=pid))
        if ran_started and not terminated:
            uncatchable = death is not None and (death.signal in ("SIGKILL", "SIGABRT") or death.status == 3)
            if not uncatchable:
                raise self.violation(f"worker pid {pid} ran on_started but not on_terminated, and was not "
                                     f"killed by an uncatchable signal ({death})")
        if terminated:
            expected = pid in life.error_pids
            if terminated[0]["error"] is not expected:
                raise self.violation(f"worker pid {pid} ran on_terminated(error={terminated[0]['error']}), "
                                     f"expected error={expected}")
        self.checked("each started worker: exactly one on_terminated, or a logged kill")
        life.settled.add(pid)

    def check_log(self) -> None:
        """No traceback but the injected ones; every injected exception logged once."""
        raised = len(self.events("raising"))

        def counts() -> tuple[int, int] | None:
            tracebacks, heads = observe.count_tracebacks(self.log_lines())
            return (tracebacks, heads) if heads >= raised else None

        found = observe.poll_until(counts, EVENT_TIMEOUT)
        lines = self.log_lines()
        if not found:
            raise self.violation(f"{raised} exception(s) injected, but only "
                                 f"{observe.count_tracebacks(lines)[1]} logged")
        tracebacks, heads = found
        if tracebacks > heads:
            raise self.violation(f"{tracebacks - heads} traceback(s) not injected by the soak in the log:\n"
                                 + self.traceback_context(lines))
        self.checked("no traceback from oversipd's own code in the log")
        alarming = observe.alarming_lines(lines)
        if alarming:
            raise self.violation(f"alarming log line: {alarming[0]}")
        dumps = sum(observe.ABORT_DUMP in line for line in lines)
        aborts = sum(observe.ABORT_SENT in line for line in lines)
        if dumps > aborts:
            raise self.violation("a Python fatal error that no worker_timeout explains")
        self.checked("no error escaped a worker's reactor")

    @staticmethod
    def traceback_context(lines: list[str]) -> str:
        starts = [i for i, line in enumerate(lines) if observe.TRACEBACK_START in line]
        return "\n".join(lines[max(0, starts[-1] - 3):starts[-1] + 14]) if starts else ""

    def check_master_resources(self) -> None:
        """Open fds (minus PER_SLOT_FDS per worker) back to their first count; RSS sampled.

        Judged on a settled sample (settled_sample), the one the poll saw:
        reading the count again afterwards would race the next respawn.
        """
        life = self.lifetime
        seen: list[MasterSample] = []

        def back_to_baseline() -> MasterSample | None:
            sample = self.settled_sample()
            if sample is None:
                return None
            seen[:] = [sample]
            if life.fds_per_master is None:
                life.fds_per_master = sample.extra
            # A reload in progress holds the configuration file open for a moment.
            return sample if sample.extra == life.fds_per_master else None

        sample = observe.poll_until(back_to_baseline, EVENT_TIMEOUT)
        if not sample:
            if not seen:
                raise self.violation(f"the master and its workers never held still for {EVENT_TIMEOUT:g} s "
                                     f"(a spawn or a death always in progress): {self.workers()}")
            files = [f"{n} -> {os.readlink(f'/proc/{life.master_pid}/fd/{n}')}"
                     for n in sorted(os.listdir(f"/proc/{life.master_pid}/fd"), key=int)]
            raise self.violation(f"the master holds {seen[0].extra} fds besides its channels, "
                                 f"was {life.fds_per_master} (settled sample: {seen[0]}); now: {files}; "
                                 f"workers: {self.workers()}" + observe.socket_peers(files))
        self.checked("the master's open fds stay flat")
        self.max_fds = max(self.max_fds, sample.fds)
        life.rss.append(sample.rss)

    def settled_sample(self) -> MasterSample | None:
        """The master's fds and RSS, read while no spawn and no death is in progress; else None.

        A spawn holds both ends of a new socketpair until the fork returns,
        and a dead worker's channel stays open until the master reaps it:
        counts taken then are no leak.  So the sample counts only when the
        workers are converged and the same before and after the reading,
        and the master sleeps (in its loop, not inside a spawn) as it starts.
        """
        before = self.workers()
        if not self.converged(before):
            return None
        try:
            master = psutil.Process(self.lifetime.master_pid)
            if master.status() != psutil.STATUS_SLEEPING:
                return None
            fds, rss = master.num_fds(), master.memory_info().rss
            # The master keeps a duplicate of each client connection its
            # workers hold (docs/sip.md, flows): the call stream's own among them.
            kept = sum(1 for c in master.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED)
        except psutil.NoSuchProcess:
            raise self.violation("the master vanished") from None
        if self.workers() != before:
            return None
        return MasterSample(extra=fds - PER_SLOT_FDS * len(before.slots) - kept, fds=fds, rss=rss)

    def check_rss_flat(self) -> None:
        rss = self.lifetime.rss
        if len(rss) <= RSS_WARMUP_CHECKS + 1:
            return
        growth = max(rss[RSS_WARMUP_CHECKS + 1:]) - rss[RSS_WARMUP_CHECKS]
        if growth > RSS_TOLERANCE:
            raise self.violation(f"the master's RSS grew by {growth >> 10} KiB after its warm-up "
                                 f"({rss[RSS_WARMUP_CHECKS] >> 10} -> {max(rss) >> 10} KiB)")
        self.rss_growth.append(growth)
        self.checked("the master's RSS stays flat")

    # --- the run ------------------------------------------------------------------------

    def run(self, choose: Callable[["Soak"], Callable[["Soak"], None]]) -> None:
        """Start, inject faults until `seconds` have passed, stop; Violation on the first failure."""
        self.start_daemon()
        self.check_step()
        if self.calls is not None:
            self.calls.start()
        started = time.monotonic()
        deadline = started + self.seconds
        while time.monotonic() < deadline:
            self.step += 1
            fault = choose(self)
            self.fault_name = fault.__name__
            if self.trace:
                self.say(f"step {self.step} at {time.monotonic() - started:.1f} s: {self.fault_name}")
            in_window(self, lambda: (fault(self), self.check_step()))
        if self.calls is not None:
            self.step += 1
            self.fault_name = "the call stream's end"
            end_call_stream(self)
        self.step += 1
        self.fault_name = "final stop"
        self.signal_master(signal.SIGTERM)
        self.end_lifetime(expected_status=0)

    def cleanup(self) -> None:
        self.sip.close()
        if self.calls is not None:
            self.calls.close()
        self.daemon.cleanup()
        if self.store is not None:
            self.store.close()
