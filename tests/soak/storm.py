"""The fork storm (issue 14): a worker forked by SIGTTIN gets USR1 and a stop within milliseconds, over and over.

`python -m soak.storm [--cycles N] [--seed N] [--no-bursts]` (tests/ on sys.path); `make soak` runs it
before the soak, and tests/test_faults_soak.py runs a short one.

One daemon runs the soak's modules and server script (tests/soak/probe.py)
with 2 workers.  Each cycle:
1. a burst: the master is stopped (SIGSTOP), gets 4 to 6 distinct signals
   it handles, and is continued, so that they arrive at once and their
   handlers run nested (what overflowed the alternate signal stack);
2. SIGTTIN; as soon as the master logs it, SIGUSR1 (sometimes SIGHUP too)
   and a stop follow: SIGTTOU (the new worker is the one retired) or, now
   and then, a full stop (SIGQUIT then SIGINT, as in the failing soak) and a
   restart.  The seed decides whether on_started awaits (0-50 ms).
The master must stay up, and every worker must exit with status 0: a
worker killed by a signal (the SIGSEGV of issue 14) fails the storm.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from oversipd.testing import Daemon

from . import observe
from .probe import MODULES, SERVER_SCRIPT

WORKERS = 2
EVENT_TIMEOUT = 20.0
FULL_STOP_EVERY = 40          # cycles between two full stops, on average (each one costs a restart)
MAX_ON_STARTED_DELAY = 0.05   # seconds on_started may await
# Handled by the master without stopping it or changing the worker count
# (SIGCONT would discard a pending SIGTTIN or SIGTTOU).  Not SIGUSR2: it
# starts a new generation, during which TTIN/TTOU wait for the swap's end.
BURST_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGWINCH, signal.SIGALRM,
                 signal.SIGPIPE, signal.SIGCHLD)


@dataclass
class StormResult:
    cycles: int = 0
    full_stops: int = 0
    workers_ended: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class Storm:
    def __init__(self, seed: int, directory: Path, say: Callable[[str], None], bursts: bool = True) -> None:
        self.rng = random.Random(seed)
        self.bursts = bursts
        self.say = say
        self.flags = directory / "flags"
        self.flags.mkdir(mode=0o755)
        (directory / "daemon").mkdir(mode=0o755)
        self.daemon = Daemon(directory / "daemon", modules=dict(MODULES), server_script=SERVER_SCRIPT,
                             core={"workers": WORKERS, "log_level": "info", "respawn_limit": 0,
                                   "graceful_timeout": 5.0, "worker_timeout": 10.0},
                             settings={"soak": {"flags": str(self.flags)}})
        self.result = StormResult()
        self.checked_to = 0   # log lines already searched for worker ends

    def log_lines(self, start: int = 0) -> list[str]:
        with self.daemon.log.changed:
            return list(self.daemon.log.items[start:])

    def wait_log(self, text: str, start: int) -> None:
        def seen() -> bool:
            return any(text in line for line in self.log_lines(start))
        if not observe.poll_until(lambda: seen() or not self.daemon.running, EVENT_TIMEOUT) or not seen():
            tail = "\n".join(self.log_lines()[-15:])
            raise RuntimeError(f"timed out waiting for {text!r} in the daemon's log; its end:\n{tail}")

    def start(self) -> None:
        since = self.daemon.mark()  # this master's READY=1, not the last one's
        self.daemon.start(wait=False)
        self.daemon.wait_notification("READY=1", EVENT_TIMEOUT, since=since)

    def cycle(self) -> None:
        delay = self.flags / "delay_on_started"
        if self.rng.random() < 0.5:
            delay.write_text(f"{self.rng.uniform(0.0, MAX_ON_STARTED_DELAY):.3f}")
        else:
            delay.unlink(missing_ok=True)
        if self.bursts:
            self.burst()
        start = len(self.log_lines())
        self.daemon.signal(signal.SIGTTIN)
        self.wait_log(f"SIGTTIN: {WORKERS + 1} worker(s)", start)
        self.daemon.signal(signal.SIGUSR1)
        if self.rng.random() < 0.2:
            self.daemon.signal(signal.SIGHUP)
        if self.rng.random() < 1 / FULL_STOP_EVERY:
            self.full_stop()
        else:
            self.daemon.signal(signal.SIGTTOU)
            self.wait_log(f"worker {WORKERS + 1} (pid", start)
        self.result.cycles += 1

    def burst(self) -> None:
        """Distinct signals the master takes in at once, nested on its signal stack."""
        self.daemon.signal(signal.SIGSTOP)
        try:
            for signum in self.rng.sample(BURST_SIGNALS, self.rng.randint(4, len(BURST_SIGNALS))):
                self.daemon.signal(signum)
        finally:
            self.daemon.signal(signal.SIGCONT)

    def full_stop(self) -> None:
        self.daemon.signal(signal.SIGQUIT)
        self.daemon.signal(signal.SIGINT)
        status = self.daemon.wait_exit(EVENT_TIMEOUT)
        if status != 0:
            self.result.failures.append(f"the master exited with status {status} after a stop")
        self.check_worker_ends()
        self.result.full_stops += 1
        self.start()

    def check_worker_ends(self) -> None:
        """Every worker end the master logged since the last look: status 0, never a signal."""
        lines = self.log_lines(self.checked_to)
        self.checked_to += len(lines)
        for death in observe.worker_deaths(lines).values():
            self.result.workers_ended += 1
            if death.status != 0:
                how = f"killed by {death.signal}" if death.signal else f"exited with status {death.status}"
                self.result.failures.append(f"cycle {self.result.cycles}: worker {death.slot} (pid {death.pid}) {how}")

    def run(self, cycles: int) -> StormResult:
        self.start()
        try:
            while self.result.cycles < cycles and not self.result.failures:
                try:
                    self.cycle()
                except (RuntimeError, ProcessLookupError):
                    if self.daemon.running:
                        raise
                    self.result.failures.append(f"cycle {self.result.cycles}: the master died "
                                                f"(status {self.daemon.process.returncode})")
                    break
                self.check_worker_ends()
            if self.daemon.running:
                self.daemon.stop(EVENT_TIMEOUT)
            self.check_worker_ends()
        finally:
            self.daemon.cleanup()
        return self.result


def run_storm(cycles: int, seed: int, say: Callable[[str], None] = print, bursts: bool = True) -> StormResult:
    directory = Path(tempfile.mkdtemp(prefix="oversipd-storm-"))
    directory.chmod(0o755)
    say(f"storm: seed {seed}, {cycles} cycle(s){'' if bursts else ' without bursts'}, in {directory}")
    began = time.monotonic()
    result = Storm(seed, directory, say, bursts).run(cycles)
    say(f"{result.cycles} cycle(s) in {time.monotonic() - began:.1f} s ({result.full_stops} full stops), "
        f"{result.workers_ended} worker end(s) checked")
    if result.ok:
        say("OK: every worker exited with status 0")
        shutil.rmtree(directory, ignore_errors=True)
    else:
        for failure in result.failures:
            say(f"FAILED: {failure}")
        say(f"the daemon's files and log are kept in {directory}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak.storm", description="Fork storm against a real oversipd.")
    parser.add_argument("--cycles", type=int, default=500, help="how many forks to storm (default 500)")
    parser.add_argument("--seed", type=int, default=None, help="replay the choices of this seed")
    parser.add_argument("--no-bursts", action="store_true", help="skip step 1 (forks, USR1 and stops only)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    return 0 if run_storm(args.cycles, seed, bursts=not args.no_bursts).ok else 1


if __name__ == "__main__":
    sys.exit(main())
