"""The measurements: each returns samples computed from probe timestamps.

oversipd and gunicorn take turns run by run (A B A B), so a burst of load
from the rest of the machine falls on both.  The long-running figures
(idle, reload, respawn) use one daemon of each kind running side by side.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil

from .daemons import DAEMONS, Daemon, Oversipd

SETTLE = 0.3            # seconds after "every worker started" before memory / TERM
QUICK_DEATH_MARGIN = 1.2  # oversipd backs off a worker dying within 1 s of its fork
NS_PER_MS = 1e6
GONE_TIMEOUT = 60.0     # seconds for the old workers of a code reload to exit


@dataclass
class Options:
    runs: int = 10
    respawn_runs: int = 20
    idle_seconds: float = 30.0
    workers: int = 4
    bin_dir: Path = Path(".venv-bench/bin")
    workdir: Path = Path("/tmp")


@dataclass
class Samples:
    """Figure name -> daemon name -> list of samples."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, figure: str, daemon: str, value: float) -> None:
        self.values.setdefault(figure, {}).setdefault(daemon, []).append(value)


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time so far, to the nanosecond: psutil's cpu_times() counts 10 ms clock ticks,
    too coarse for an idle process."""
    try:
        with open(f"/proc/{process.pid}/schedstat", encoding="ascii") as schedstat:
            return int(schedstat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        cpu = process.cpu_times()
        return cpu.user + cpu.system


class Bench:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.samples = Samples()
        self.counter = 0

    def new_daemon(self, kind: type[Daemon], workers: int, label: str) -> Daemon:
        self.counter += 1
        workdir = self.options.workdir / f"{self.counter:03d}-{kind.name}-{label}"
        return kind(workdir, workers, self.options.bin_dir)

    def pair(self, workers: int, label: str) -> list[Daemon]:
        """One daemon of each kind, started, every worker up."""
        daemons = [self.new_daemon(kind, workers, label) for kind in DAEMONS]
        for daemon in daemons:
            t0 = daemon.start()
            daemon.wait_started(workers, t0)
        time.sleep(SETTLE)
        return daemons

    # --- start, stop and memory: a fresh daemon per run ------------------------

    def start_runs(self, workers: int) -> None:
        """start -> every worker started; with the full worker count also memory and stop."""
        for _ in range(self.options.runs):
            for kind in DAEMONS:
                daemon = self.new_daemon(kind, workers, f"start{workers}")
                try:
                    t0 = daemon.start()
                    started = daemon.wait_started(workers, t0)
                    self.samples.add(f"start_{workers}", kind.name,
                                     (max(e.t_ns for e in started) - t0) / NS_PER_MS)
                    (loaded,) = daemon.events.wait_count("loaded", 1, t0)
                    self.samples.add(f"master_up_{workers}", kind.name, (loaded.t_ns - t0) / NS_PER_MS)
                    if workers == self.options.workers:
                        time.sleep(SETTLE)
                        self.record_memory(daemon)
                        t_term = daemon.send(signal.SIGTERM)
                        t_exit = daemon.wait_exit()
                        self.samples.add(f"stop_{workers}", kind.name, (t_exit - t_term) / NS_PER_MS)
                finally:
                    daemon.stop()

    def record_memory(self, daemon: Daemon) -> None:
        total_pss = 0
        for index, process in enumerate(daemon.processes()):
            info = process.memory_full_info()
            role = "master" if index == 0 else "worker"
            for what in ("rss", "uss", "pss"):
                self.samples.add(f"mem_{role}_{what}", daemon.name, getattr(info, what) / 2**20)
            total_pss += info.pss
        self.samples.add("mem_total_pss", daemon.name, total_pss / 2**20)

    # --- idle, reload, respawn: one long-running daemon of each kind ---------------

    def long_running_runs(self) -> None:
        daemons = self.pair(self.options.workers, "long")
        try:
            self.idle_windows(daemons)
            self.reloads(daemons)
            self.code_reloads(daemons)
            self.respawns(daemons)
        finally:
            for daemon in daemons:
                daemon.stop()

    def idle_windows(self, daemons: list[Daemon]) -> None:
        """CPU time and voluntary context switches per process over idle_seconds, both daemons at once."""
        for _ in range(self.options.runs):
            before = {d.name: self.usage(d) for d in daemons}
            time.sleep(self.options.idle_seconds)
            for daemon in daemons:
                for role, (cpu, switches) in self.usage_since(daemon, before[daemon.name]):
                    self.samples.add(f"idle_{role}_cpu", daemon.name, cpu * 1000)
                    self.samples.add(f"idle_{role}_wakeups", daemon.name, switches)

    @staticmethod
    def usage(daemon: Daemon) -> dict[int, tuple[float, int]]:
        """pid -> (CPU seconds, voluntary context switches so far)."""
        return {p.pid: (cpu_seconds(p), p.num_ctx_switches().voluntary) for p in daemon.processes()}

    def usage_since(self, daemon: Daemon, before: dict[int, tuple[float, int]]) -> Iterator[tuple[str, tuple[float, int]]]:
        after = self.usage(daemon)
        for pid, (cpu, switches) in after.items():
            if pid in before:
                role = "master" if pid == daemon.pid else "worker"
                yield role, (cpu - before[pid][0], switches - before[pid][1])

    def reloads(self, daemons: list[Daemon]) -> None:
        """SIGHUP -> every worker's on_reload done (oversipd) / every new worker started (gunicorn)."""
        workers = self.options.workers
        for _ in range(self.options.runs):
            for daemon in daemons:
                old = frozenset(p.pid for p in daemon.worker_processes())
                t_hup = daemon.send(signal.SIGHUP)
                if daemon.name == "oversipd":
                    done = daemon.events.wait_count("reloaded", workers, t_hup)
                else:
                    done = daemon.wait_started(workers, t_hup, exclude=old)
                    # Let the old workers finish leaving before the next turn.
                    daemon.events.wait_for(lambda events: {e.pid for e in events if e.kind == "terminated"} >= old,
                                           "the old workers' exit")
                self.samples.add(f"reload_{workers}", daemon.name,
                                 (max(e.t_ns for e in done) - t_hup) / NS_PER_MS)
                time.sleep(SETTLE)

    def code_reloads(self, daemons: list[Daemon]) -> None:
        """SIGHUP -> every new worker started and every old worker gone.

        oversipd: its probe module is edited before each HUP, so each is a
        new generation on new code (SPEC §5).  gunicorn: the same SIGHUP,
        which replaces its workers (new code only without --preload).
        """
        workers = self.options.workers
        for run in range(self.options.runs):
            for daemon in daemons:
                if isinstance(daemon, Oversipd):
                    daemon.edit_probe(f"code reload {run}")
                old = frozenset(p.pid for p in daemon.worker_processes())
                pidfds = [os.pidfd_open(pid) for pid in old]
                try:
                    t_hup = daemon.send(signal.SIGHUP)
                    started = daemon.wait_started(workers, t_hup, exclude=old)
                    gone = wait_gone(pidfds)
                finally:
                    for fd in pidfds:
                        os.close(fd)
                done = max(max(e.t_ns for e in started), gone)
                self.samples.add(f"code_reload_{workers}", daemon.name, (done - t_hup) / NS_PER_MS)
                time.sleep(SETTLE)

    def restarts(self) -> None:
        """oversipd stopped and started again (what `systemctl restart` does): SIGTERM -> every new worker started."""
        workers = self.options.workers
        for _ in range(self.options.runs):
            first = self.new_daemon(Oversipd, workers, "restart")
            second = self.new_daemon(Oversipd, workers, "restarted")
            try:
                first.wait_started(workers, first.start())
                time.sleep(SETTLE)
                t_term = first.send(signal.SIGTERM)
                first.wait_exit()
                t_start = second.start()
                started = second.wait_started(workers, t_start)
                self.samples.add(f"restart_{workers}", first.name, (max(e.t_ns for e in started) - t_term) / NS_PER_MS)
            finally:
                first.stop()
                second.stop()

    def respawns(self, daemons: list[Daemon]) -> None:
        """SIGKILL a worker -> its replacement started; each victim has lived > 1 s."""
        for _ in range(self.options.respawn_runs):
            for daemon in daemons:
                victim, started = self.oldest_worker(daemon)
                age = (time.monotonic_ns() - started) / 1e9
                if age < QUICK_DEATH_MARGIN:
                    time.sleep(QUICK_DEATH_MARGIN - age)  # the immediate respawn, not the back-off
                t_kill = daemon.send(signal.SIGKILL, victim)
                (replacement,) = daemon.wait_started(1, t_kill, exclude=frozenset({victim}))
                self.samples.add("respawn", daemon.name, (replacement.t_ns - t_kill) / NS_PER_MS)

    @staticmethod
    def oldest_worker(daemon: Daemon) -> tuple[int, int]:
        """(pid, started ns) of the worker that reported started longest ago."""
        daemon.events.drain()
        known = [(daemon.started_at(p.pid), p.pid) for p in daemon.worker_processes()]
        started, pid = min((t, pid) for t, pid in known if t is not None)
        return pid, started


def wait_gone(pidfds: list[int], timeout: float = GONE_TIMEOUT) -> int:
    """Block until every process behind `pidfds` has exited; return when the last one was seen (ns)."""
    waiting = set(pidfds)
    deadline = time.monotonic() + timeout
    seen = time.monotonic_ns()
    while waiting:
        readable, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.monotonic()))
        seen = time.monotonic_ns()
        if not readable:
            raise TimeoutError(f"{len(waiting)} old worker(s) still running after {timeout:g} s")
        waiting -= set(readable)
    return seen
