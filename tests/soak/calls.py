"""The soak's call stream: SIPp callers -> oversipd (a record-routing proxy) -> a SIPp callee, through every fault.

Two callers run from the first step to the last: one over UDP with a
socket per call (the calls spread over the workers' slots), one over a
single TCP connection (reconnected when it breaks).  Each logs every call
with wall-clock times (tests/sipp/soak_call_uac.xml): started, answered
(the INVITE's 200), bye_ok (the BYE's 200), or which wait timed out.  At
the end, `judge` pairs each call that did not end bye_ok with the soak's
steps it overlapped: it is excused only by a step that ended a worker or
the master (docs/RELIABILITY.md §1, "the call stream").
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from oversipd.sip.counters import read_counters

from listen_helpers import free_port
from sip_helpers import SIPP, SIPP_DIR, Callee

from . import observe

if TYPE_CHECKING:
    from .runner import Soak

UDP_RATE = 20          # calls per second over UDP (a socket per call)
TCP_RATE = 5           # calls per second over the one TCP connection
CALL_TIMEOUT = 16.0    # the scenario's wait for each 200 (tests/sipp/soak_call_uac.xml)
STOP_TIMEOUT = 60.0    # the callers' calls in progress end within CALL_TIMEOUT twice, plus their pause
# Once the stream stopped, the longest a transaction outlives the caller's last
# message: a request forwarded to a callee that never answers (SIPp ignores a
# BYE for a call it aborted; SIPp's caller sends that BYE when it aborts the
# call at the very end) is retransmitted until Timer F (64*T1, 32 s), answered
# 408 upstream, and then its server transaction absorbs retransmissions for
# Timer J (32 s more): 64 s (seed 4230668120 met it: 45 s was too short).
DRAIN_TIMEOUT = 75.0
RECONNECT_AFTER = 0.2  # seconds between a TCP caller's end and its next run
# What the caller logs (tests/sipp/soak_call_uac.xml); a call sipp aborted (a retransmission
# limit, an unexpected response, its run's end) logs no last line.
LOGGED = ("start", "answered", "bye_ok", "unanswered", "bye_lost", "refused", "bye_refused")
# Answered by the admission control's 503 with Retry-After (SIP.md §15): a refusal the contract allows.
REFUSALS = ("refused", "bye_refused")


@dataclass
class Call:
    """One call as its caller logged it: the wall-clock time of each step it reached."""

    transport: str
    call_id: str
    ended: float | None = None    # when its sipp run ended (lost its connection), if before the stream's end
    times: dict[str, float] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """bye_ok; refused or bye_refused (a 503); or how it failed: unanswered (no 200 to its INVITE)
        or bye_lost (a 200, then no 200 to its BYE)."""
        for outcome in ("bye_ok", *REFUSALS):
            if outcome in self.times:
                return outcome
        return "bye_lost" if "answered" in self.times else "unanswered"

    @property
    def span(self) -> tuple[float, float]:
        """From its INVITE to the latest moment it can have ended: its last step plus one wait, or its run's end."""
        start = self.times.get("start", min(self.times.values()))
        end = max(self.times.values()) + CALL_TIMEOUT
        return start, end if self.ended is None else min(end, self.ended)


@dataclass(frozen=True)
class Window:
    """One soak step, in wall-clock time, and what ended during it: "master", "worker" or ""."""

    step: int
    fault: str
    start: float
    end: float
    ended: str


class SoakCallee(Callee):
    """The callee, for as long as the soak runs: no call limit, no timeout, its screen to a file, not a pipe."""

    def __init__(self, directory: Path) -> None:
        assert SIPP is not None, "sipp is missing: `make test` installs Debian's sip-tester"
        self.port = free_port("tcp", "udp")
        with (directory / "callee.out").open("w") as screen:
            self.process = subprocess.Popen(
                [SIPP, "-sf", str(SIPP_DIR / "soak_call_uas.xml"), "-t", "u1", "-i", "127.0.0.1",
                 "-p", str(self.port), "-nostdin", "-trace_err", "-error_file", str(directory / "callee.errors")],
                stdout=screen, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, cwd=directory)
        self.wait_listening()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Caller:
    """One transport's caller, run again whenever it exits before the end.

    sipp ends when its TCP connection is lost (the daemon stopped; its own
    reconnection fails in Debian's SCTP build): the calls it had in progress
    end with it, and the next run dials a new connection.
    """

    def __init__(self, directory: Path, transport: str, mode: str, rate: int, proxy_port: int, callee_port: int) -> None:
        self.directory = directory
        self.transport = transport
        self.mode = mode
        self.rate = rate
        self.target = proxy_port
        self.callee_port = callee_port
        self.runs: list[tuple[Path, float | None]] = []   # (log, wall-clock end) of each run
        self.stopping = threading.Event()
        self.process: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.keep_running, name=f"soak {transport} caller", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def keep_running(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if self.stopping.is_set():
                    return
                self.process = self.spawn(len(self.runs) + 1)
            status = self.process.wait()
            self.runs[-1] = (self.runs[-1][0], time.time())
            if status != 0 and not self.stopping.is_set():
                # Not a wait for something: the daemon may be down, dial again a moment later.
                self.stopping.wait(RECONNECT_AFTER)

    def spawn(self, run: int) -> subprocess.Popen[str]:
        assert SIPP is not None, "sipp is missing: `make test` installs Debian's sip-tester"
        log = self.directory / f"{self.transport}.{run}.calls.log"
        self.runs.append((log, None))
        command = [SIPP, "-sf", str(SIPP_DIR / "soak_call_uac.xml"), "-t", self.mode, "-i", "127.0.0.1",
                   "-p", str(free_port("tcp", "udp")), "-r", str(self.rate), "-nostdin", "-max_socket", "400",
                   "-key", "uas", f"127.0.0.1:{self.callee_port}", "-max_retrans", "6",
                   "-trace_logs", "-log_file", str(log), "-trace_err", "-error_file", str(log.with_suffix(".errors")),
                   f"127.0.0.1:{self.target}"]
        with (self.directory / f"{self.transport}.{run}.stderr").open("w") as errors:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                    text=True, cwd=self.directory)

    def stop(self, timeout: float) -> None:
        """SIGUSR1: no new call; sipp exits once its calls in progress ended (killed after `timeout`)."""
        with self.lock:
            self.stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGUSR1)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        self.thread.join(timeout)

    def calls(self) -> list[Call]:
        calls: list[Call] = []
        for log, ended in self.runs:
            by_id: dict[str, Call] = {}
            for line in log.read_text().splitlines() if log.exists() else ():
                fields = line.split()
                if len(fields) >= 5 and fields[0] in LOGGED:
                    call = by_id.setdefault(fields[1], Call(self.transport, fields[1], ended=ended))
                    call.times[fields[0]] = float(fields[4])
            calls += by_id.values()
        return calls


class CallStream:
    """The callee and the two callers, their logs in `directory`."""

    def __init__(self, directory: Path, proxy_port: int) -> None:
        self.directory = directory
        directory.mkdir(mode=0o755, exist_ok=True)
        self.callee = SoakCallee(directory)
        self.callers = [Caller(directory, transport, mode, rate, proxy_port, self.callee.port)
                        for transport, mode, rate in (("udp", "un", UDP_RATE), ("tcp", "t1", TCP_RATE))]

    def start(self) -> None:
        for caller in self.callers:
            caller.start()

    def stop(self) -> None:
        for caller in self.callers:
            caller.stop(STOP_TIMEOUT)

    def calls(self) -> list[Call]:
        return [call for caller in self.callers for call in caller.calls()]

    def close(self) -> None:
        for caller in self.callers:
            caller.stop(0)
        self.callee.stop()


@dataclass
class Verdict:
    """What the calls came to: counts per transport and outcome, and the failures no fault excuses."""

    counts: Counter[tuple[str, str]]
    excused: Counter[str]
    unexcused: list[tuple[Call, list[Window]]]

    def summary(self) -> str:
        parts = [f"{t} {o} {n}" for (t, o), n in sorted(self.counts.items())]
        return ", ".join(parts) + ("; excused by: " + ", ".join(f"{f} {n}" for f, n in sorted(self.excused.items()))
                                   if self.excused else "")


def judge(calls: list[Call], windows: list[Window]) -> Verdict:
    """Each call that did not end bye_ok must overlap a step that ended a worker or the master.

    The rule of docs/RELIABILITY.md §1: a call may fail only while the
    worker that held one of its transactions, or the master, went away.
    """
    counts: Counter[tuple[str, str]] = Counter()
    excused: Counter[str] = Counter()
    unexcused: list[tuple[Call, list[Window]]] = []
    for call in calls:
        counts[(call.transport, call.outcome)] += 1
        if call.outcome in ("bye_ok", *REFUSALS):
            continue
        start, end = call.span
        overlapping = [w for w in windows if w.start <= end and start <= w.end]
        # The master's stop ends every connection and call; a worker's end, the transactions it held.
        excuse = next((w for w in overlapping if w.ended == "master"), None) or \
            next((w for w in overlapping if w.ended == "worker"), None)
        if excuse is None:
            unexcused.append((call, overlapping))
        else:
            excused[f"{excuse.ended} ended ({call.transport} {call.outcome})"] += 1
    return Verdict(counts, excused, unexcused)


def in_window(soak: "Soak", step: Callable[[], object]) -> None:
    """Run a step and note its wall-clock window, and whether a worker or the master ended in it."""
    start, (_, lines) = time.time(), soak.mark()
    lifetimes = soak.lifetimes
    try:
        step()
    finally:
        ended = "master" if soak.lifetimes != lifetimes else \
            "worker" if observe.worker_deaths(soak.log_lines(lines)) else ""
        soak.windows.append(Window(soak.step, soak.fault_name, start, time.time(), ended))


def end_call_stream(soak: "Soak") -> None:
    """Stop the stream; every call that got 200 got its BYE through, or a fault explains it; no transaction left."""
    assert soak.calls is not None
    soak.calls.stop()
    soak.verdict = verdict = judge(soak.calls.calls(), soak.windows)
    if not verdict.counts:
        raise soak.violation(f"the call stream made no call: see {soak.calls.directory}")
    if verdict.unexcused:
        call, windows = verdict.unexcused[0]
        raise soak.violation(f"{len(verdict.unexcused)} call(s) failed with no worker or master ended "
                             f"meanwhile; the first: {call} during {[w.fault for w in windows]}")
    soak.checked("every call that got 200 got its BYE through, unless a fault ended its worker")
    check_no_transaction_left(soak)


def check_no_transaction_left(soak: "Soak") -> None:
    """Once the traffic stopped and its timers ran out, every live worker holds no transaction (the gauges)."""
    began = time.monotonic()

    def held() -> dict[int, tuple[int, int]]:
        rows = read_counters(soak.pid_file) or {}
        return {slot: (row["server_tx"], row["client_tx"]) for slot, row in rows.items()
                if slot <= soak.target and (row["server_tx"] or row["client_tx"])}

    if not observe.poll_until(lambda: not held(), DRAIN_TIMEOUT):
        raise soak.violation(f"transactions left {DRAIN_TIMEOUT:g} s after the calls stopped "
                             f"(slot: (server, client)): {held()}")
    soak.drained_in = time.monotonic() - began
    soak.checked("no transaction left once the calls stopped")
