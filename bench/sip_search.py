"""The rate search of `make bench-sip`: the highest rate a server sustains with 0 failed calls.

Short probes start low and double the rate until one fails, then bisect
between the last rate that passed and the first that failed.  The rate
found must then pass `rounds` sustained runs of `duration` seconds; a
sustained run that fails backs the rate off and its rounds start over.
Every search moves one probe at a time, so that the searches of the
servers in one table take turns (see bench/sip.py).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from .sipp_client import SippCounts

# A run must end close to its planned length: one that lasts longer either
# queued calls up (the server lags, and would fail if it went on) or had a
# SIPp that could not place calls that fast (the load generator was the limit).
OVERTIME_SHARE = 0.05
OVERTIME_SECONDS = 0.25  # SIPp's start and exit, the last calls' round trip


@dataclass
class Run:
    """One SIPp run against one server, and what the server spent on it."""

    rate: float
    seconds: float
    calls: int
    uac: SippCounts
    uas: SippCounts | None
    cpu_ns: int
    rcvbuf_errors: int
    messages_per_call: int
    busiest_ns: int = 0          # the CPU time of the server's busiest process in the run

    @property
    def busiest_share(self) -> float:
        """The busiest process's share of the server's CPU time: 0.5 is two workers evenly busy."""
        return self.busiest_ns / self.cpu_ns if self.cpu_ns else math.nan

    @property
    def messages(self) -> int:
        """SIP messages the server received: those of each completed call, and every retransmission."""
        retransmitted = self.uac.retransmissions + (self.uas.retransmissions if self.uas else 0)
        return self.uac.successful * self.messages_per_call + retransmitted

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_ns / 1000 / self.messages if self.messages else math.nan

    @property
    def failure(self) -> str:
        """Why this run does not count as 0 failed calls at its rate; "" when it does."""
        problems = []
        if self.uac.failed or self.uac.successful < self.calls:
            problems.append(f"{self.uac.failed} failed, {self.uac.successful}/{self.calls} completed")
        elif self.uac.exit_status != 0:
            problems.append(f"UAC exit status {self.uac.exit_status}")
        if self.uas is not None and (self.uas.failed or self.uas.exit_status != 0):
            problems.append(f"UAS: {self.uas.failed} failed, exit status {self.uas.exit_status}")
        allowed = self.seconds * (1 + OVERTIME_SHARE) + OVERTIME_SECONDS
        if not problems and self.uac.wall_seconds > allowed:
            problems.append(f"lasted {self.uac.wall_seconds:.1f} s, not {self.seconds:g} s "
                            f"(calls queued, or SIPp could not keep the pace: {self.uac.call_rate:.0f}/s)")
        return "; ".join(problems)

    @property
    def ok(self) -> bool:
        return not self.failure


def nice(rate: float) -> float:
    """Two significant digits: 7071 → 7100, so that rates read as chosen."""
    if rate <= 0:
        return rate
    digits = 1 - int(math.floor(math.log10(rate)))
    return round(rate, digits)


@dataclass
class Search:
    start_rate: float
    max_rate: float
    probe_seconds: float
    duration: float
    rounds: int
    resolution: float = 0.1      # bisect until the failing rate is within 10 % of the passing one
    backoff: float = 0.9         # a failed sustained run retries at 90 % of its rate
    max_backoffs: int = 4
    min_rate: float = 10.0
    passed: float | None = None  # highest probe rate that passed
    failed: float | None = None  # lowest probe rate that failed
    probes: list[Run] = field(default_factory=list)
    sustained: list[Run] = field(default_factory=list)   # the current rate's passing sustained runs
    backoffs: int = 0
    limit: str = ""              # what failed the run at the lowest failing rate
    gave_up: str = ""
    same_rate: float | None = None                          # the rate every server of the table held
    same_rate_runs: list[Run] = field(default_factory=list)  # this server's runs at it

    # --- what to run next ---------------------------------------------------

    def next_run(self) -> tuple[float, float] | None:
        """(rate, seconds) of the next run, or None when the search is over."""
        if self.gave_up or len(self.sustained) >= self.rounds:
            return None
        if self.confirming:
            return self.passed, self.duration
        return self.next_probe_rate(), self.probe_seconds

    @property
    def confirming(self) -> bool:
        if self.passed is None:
            return False
        if self.failed is None:
            return self.passed >= self.max_rate
        return self.failed <= self.passed * (1 + self.resolution) or self.sustained_started

    @property
    def sustained_started(self) -> bool:
        return bool(self.sustained) or self.backoffs > 0

    def next_probe_rate(self) -> float:
        if self.passed is None and self.failed is None:
            return self.start_rate
        if self.failed is None:
            return min(self.max_rate, nice(self.passed * 2))
        if self.passed is None:
            return nice(self.failed / 2)
        rate = nice(math.sqrt(self.passed * self.failed))
        if not self.passed < rate < self.failed:
            rate = (self.passed + self.failed) / 2
        return rate

    # --- what a run tells -----------------------------------------------------

    def record(self, run: Run) -> None:
        if self.confirming:
            self.record_sustained(run)
        else:
            self.record_probe(run)

    def record_probe(self, run: Run) -> None:
        self.probes.append(run)
        if run.ok:
            self.passed = run.rate
            return
        self.note_failure(run)
        if self.passed is None and run.rate / 2 < self.min_rate:
            self.gave_up = f"fails even at {run.rate:g}/s ({run.failure})"

    def record_sustained(self, run: Run) -> None:
        if run.ok:
            self.sustained.append(run)
            return
        self.probes.append(run)
        self.backoffs += 1
        self.sustained.clear()
        if self.backoffs > self.max_backoffs:
            self.gave_up = f"no rate held for {self.duration:g} s ({run.rate:g}/s: {run.failure})"
            return
        self.note_failure(run)
        self.passed = nice(run.rate * self.backoff)

    def note_failure(self, run: Run) -> None:
        if self.failed is None or run.rate <= self.failed:
            self.failed = run.rate
            self.limit = f"{run.rate:g}/s: {run.failure}"

    # --- the result -------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        return self.passed if len(self.sustained) >= self.rounds else None

    @property
    def cpu_us_per_message(self) -> float | None:
        return statistics.median(r.cpu_us_per_message for r in self.sustained) if self.rate else None

    @property
    def rcvbuf_errors(self) -> int:
        return sum(r.rcvbuf_errors for r in self.sustained)

    @property
    def retransmissions(self) -> int:
        return sum(r.uac.retransmissions + (r.uas.retransmissions if r.uas else 0) for r in self.sustained)

    @property
    def busiest_share(self) -> float | None:
        return statistics.median(r.busiest_share for r in self.sustained) if self.rate else None

    @property
    def same_rate_cpu(self) -> float | None:
        passed = [r.cpu_us_per_message for r in self.same_rate_runs if r.ok]
        return statistics.median(passed) if passed else None
