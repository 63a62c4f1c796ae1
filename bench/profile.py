"""`python -m bench.profile`: where oversipd's start, respawn and stop time goes.

Runs oversipd through `probes/oversipd_phases.py`, which stamps each phase
boundary, and prints the median (min-max) of every phase; then the
imports on the master's start path (`-X importtime`, best of several runs)
and a py-spy profile of `oversipd check` (config + module import).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from .daemons import PROBES, Oversipd
from .events import Event
from .figures import QUICK_DEATH_MARGIN, SETTLE

NS_PER_MS = 1e6


class OversipdPhases(Oversipd):
    name = "oversipd"

    def command(self) -> list[str]:
        return [str(self.bin_dir / "python"), str(PROBES / "oversipd_phases.py"),
                "run", "-c", str(self.workdir / "oversipd.conf")]


class Phases:
    """Phase name -> samples (ms), in the order phases were first seen."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, start_ns: int | None, end_ns: int | None) -> None:
        if start_ns is not None and end_ns is not None:
            self.samples[name].append((end_ns - start_ns) / NS_PER_MS)

    def print(self, title: str) -> None:
        print(f"\n{title}  (ms: median, min-max, n)")
        for name, values in self.samples.items():
            print(f"  {name:<58} {statistics.median(values):8.2f}   "
                  f"{min(values):7.2f}-{max(values):<8.2f} n={len(values)}")


def first(events: list[Event], kind: str, after: int = 0, pid: int | None = None) -> int | None:
    return next((e.t_ns for e in events if e.kind == kind and e.t_ns >= after
                 and (pid is None or e.pid == pid)), None)


def last(events: list[Event], kind: str, after: int = 0) -> int | None:
    stamps = [e.t_ns for e in events if e.kind == kind and e.t_ns >= after]
    return max(stamps) if stamps else None


def child_phases(phases: Phases, events: list[Event], after: int, pids: set[int]) -> None:
    """The phases inside each new worker, from its first Python code to on_started done."""
    for pid in pids:
        child = first(events, "child_first_code", after, pid)
        ready = first(events, "worker_ready_for_loop", after, pid)
        loop = first(events, "loop_running", after, pid)
        started = first(events, "started", after, pid)
        phases.add("child: reset signals, close fds, title, privileges", child, ready)
        phases.add("child: build the event loop, run it", ready, loop)
        phases.add("child: loop running -> on_started done", loop, started)


def profile_start_and_stop(workdir: Path, bin_dir: Path, runs: int, workers: int) -> None:
    start, stop = Phases(), Phases()
    for run in range(runs):
        daemon = OversipdPhases(workdir / f"start-{run}", workers, bin_dir)
        try:
            t0 = daemon.start()
            daemon.wait_started(workers, t0)
            time.sleep(SETTLE)
            t_term = daemon.send(signal.SIGTERM)
            t_exit = daemon.wait_exit()
            daemon.events.drain()
            ev = daemon.events.events
            up, imported, loaded = first(ev, "interpreter_up"), first(ev, "imported"), first(ev, "loaded")
            run_at, spawn1 = first(ev, "master_run"), first(ev, "spawn")
            start.add("spawn -> interpreter up (exec, site, venv)", t0, up)
            start.add("interpreter up -> oversipd.cli/master/worker imported", up, imported)
            start.add("imported -> config read, drop-in modules imported", imported, loaded)
            start.add("modules imported -> Master.run", loaded, run_at)
            start.add("Master.run -> first fork", run_at, spawn1)
            start.add("first fork -> last fork", spawn1, last(ev, "spawn"))
            start.add("last fork -> every worker started", last(ev, "spawn"), last(ev, "started", t0))
            child_phases(start, ev, t0, {e.pid for e in ev if e.kind == "child_first_code"})
            start.add("TOTAL spawn -> every worker started", t0, last(ev, "started", t0))
            stop.add("SIGTERM -> master handles it", t_term, first(ev, "term_handled", t_term))
            stop.add("master handles it -> every worker in terminate()", first(ev, "term_handled", t_term),
                     last(ev, "terminate", t_term))
            stop.add("-> every worker's on_terminated done", last(ev, "terminate", t_term),
                     last(ev, "terminated", t_term))
            stop.add("-> every worker at os._exit", last(ev, "terminated", t_term),
                     max(e.t_ns for e in ev if e.kind == "os_exit" and e.pid != daemon.pid))
            stop.add("-> master at os._exit", max(e.t_ns for e in ev if e.kind == "os_exit" and e.pid != daemon.pid),
                     first(ev, "os_exit", t_term, daemon.pid))
            stop.add("master os._exit -> harness sees it exit (pidfd)", first(ev, "os_exit", t_term, daemon.pid), t_exit)
            stop.add("TOTAL SIGTERM -> master exited", t_term, t_exit)
        finally:
            daemon.stop()
    start.print(f"oversipd start, {workers} workers")
    stop.print(f"oversipd stop, {workers} workers")


def profile_respawn(workdir: Path, bin_dir: Path, runs: int, workers: int) -> None:
    phases = Phases()
    daemon = OversipdPhases(workdir / "respawn", workers, bin_dir)
    try:
        t0 = daemon.start()
        daemon.wait_started(workers, t0)
        for _ in range(runs):
            daemon.events.drain()
            known = [(daemon.started_at(p.pid), p.pid) for p in daemon.worker_processes()]
            started, victim = min((t, pid) for t, pid in known if t is not None)
            age = (time.monotonic_ns() - started) / 1e9
            if age < QUICK_DEATH_MARGIN:
                time.sleep(QUICK_DEATH_MARGIN - age)
            t_kill = daemon.send(signal.SIGKILL, victim)
            (new,) = daemon.wait_started(1, t_kill, exclude=frozenset({victim}))
            ev = daemon.events.events
            woke, spawn = first(ev, "signal_read", t_kill), first(ev, "spawn", t_kill)
            child = first(ev, "child_first_code", t_kill, new.pid)
            phases.add("SIGKILL -> master reads SIGCHLD (teardown + wake-up)", t_kill, woke)
            phases.add("-> reaped, spawn_worker entered", woke, spawn)
            phases.add("-> first Python code in the child (socketpair, fork)", spawn, child)
            child_phases(phases, ev, t_kill, {new.pid})
            phases.add("TOTAL SIGKILL -> replacement started", t_kill, new.t_ns)
    finally:
        daemon.stop()
    phases.print(f"oversipd respawn ({workers} workers, each victim older than {QUICK_DEATH_MARGIN} s)")


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def profile_imports(bin_dir: Path, repeats: int = 5, threshold_ms: float = 2.0) -> None:
    """-X importtime of the master's start path, the minimum of each module over a few runs."""
    best: dict[str, tuple[int, int, int]] = {}
    order: list[str] = []
    code = "import oversipd.cli, oversipd.master"
    for _ in range(repeats):
        result = subprocess.run([str(bin_dir / "python"), "-X", "importtime", "-c", code],
                                capture_output=True, text=True, check=True)
        for line in result.stderr.splitlines():
            match = IMPORT_LINE.match(line)
            if not match:
                continue
            own, total, indent, name = int(match[1]), int(match[2]), len(match[3]) // 2, match[4]
            if name not in best:
                order.append(name)
                best[name] = (own, total, indent)
            else:
                best[name] = (min(best[name][0], own), min(best[name][1], total), indent)
    print(f"\nimports on the master's start path (-X importtime, best of {repeats}; "
          f"cumulative >= {threshold_ms:g} ms; ms self / cumulative)")
    for name in order:
        own, total, indent = best[name]
        if total / 1000 >= threshold_ms and indent <= 4:
            print(f"  {'  ' * indent}{name:<{44 - 2 * indent}} {own / 1000:7.1f} {total / 1000:8.1f}")


FRAME = re.compile(r"(\S+) \((.+?):\d+\)")


def profile_check(bin_dir: Path, workdir: Path, rate: int = 2000) -> None:
    """py-spy over `oversipd check`: config and module import, what the master does before the fork."""
    daemon = Oversipd(workdir / "check", 1, bin_dir)
    raw = workdir / "py-spy.txt"
    try:
        subprocess.run([str(bin_dir / "py-spy"), "record", "--rate", str(rate), "--format", "raw",
                        "-o", str(raw), "--", str(bin_dir / "oversipd"), "check", "-c",
                        str(daemon.workdir / "oversipd.conf")],
                       capture_output=True, text=True, cwd=daemon.workdir, check=True)
    finally:
        daemon.stop()
    by_module: dict[str, int] = defaultdict(int)
    total = importing = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [match.groups() for match in map(FRAME.fullmatch, stack.split(";")) if match]
        total += int(count)
        modules = [file for function, file in frames if function == "<module>"]
        if len(modules) > 1:  # below the command's own <module>: an import is running
            importing += int(count)
            by_module[modules[-1]] += int(count)
    print(f"\npy-spy ({rate} Hz) over `oversipd check`: {total} samples, {importing} of them importing; "
          "the module whose top-level code was running:")
    for module, count in sorted(by_module.items(), key=lambda item: -item[1])[:15]:
        print(f"  {module:<60} {count:5d} samples  {count / rate * 1000:6.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent.absolute()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="ovsprof-") as tmp:
        workdir = Path(tmp)
        profile_start_and_stop(workdir, bin_dir, args.runs, args.workers)
        profile_respawn(workdir, bin_dir, 2 * args.runs, args.workers)
        profile_imports(bin_dir)
        profile_check(bin_dir, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
