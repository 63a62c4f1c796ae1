"""What the soak sees of a running daemon: its processes (psutil), its log and its events."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import psutil

from .probe import INJECTED_MARK

WORKER_TITLE = re.compile(r"^oversipd: worker (\d+)\b")
# Master lines about a worker's end: "worker 2 (pid 123) killed by SIGKILL; respawning"
WORKER_DEATH = re.compile(r"worker (\d+) \(pid (\d+)\) (exited with status (-?\d+)|killed by (SIG\w+))")
TRACEBACK_START = "Traceback (most recent call last):"
# The head line logger.render() writes before the traceback of an injected exception.
INJECTED_HEAD = re.compile(re.escape(INJECTED_MARK) + r" failure in (\w+) \((\w+)\)$")
# Lines that mean an error escaped somewhere it should not, whatever else happened.
ALARMING = ("exception escaped the reactor", "Task was destroyed but it is pending",
            "Task exception was never retrieved", "Exception ignored in")
# faulthandler's dump when a stuck worker gets SIGABRT: expected once per abort at most.
ABORT_DUMP = "Fatal Python error"
ABORT_SENT = "(worker_timeout); sending SIGABRT"
POLL_INTERVAL = 0.05

T = TypeVar("T")


@dataclass(frozen=True)
class Workers:
    """The master's children as psutil sees them at one instant."""

    slots: dict[int, int]        # slot -> pid of the live workers
    duplicates: list[int]        # slots held by more than one live process (one is leaving)
    untitled: list[int]          # children that are not (yet) titled as workers
    zombies: list[int]
    stopped: list[int]

    @property
    def pids(self) -> set[int]:
        return set(self.slots.values())


def observe_workers(master_pid: int) -> Workers:
    slots: dict[int, int] = {}
    duplicates, untitled, zombies, stopped = [], [], [], []
    try:
        children = psutil.Process(master_pid).children()
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            status = child.status()
            title = " ".join(child.cmdline()).strip()
        except psutil.ZombieProcess:
            zombies.append(child.pid)
            continue
        except psutil.NoSuchProcess:
            continue
        if status == psutil.STATUS_ZOMBIE:
            zombies.append(child.pid)
            continue
        if status == psutil.STATUS_STOPPED:
            stopped.append(child.pid)
        match = WORKER_TITLE.match(title)
        if match is None:
            untitled.append(child.pid)
        elif int(match.group(1)) in slots:
            duplicates.append(int(match.group(1)))
        else:
            slots[int(match.group(1))] = child.pid
    return Workers(slots, duplicates, untitled, zombies, stopped)


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def poll_until(probe: Callable[[], T], timeout: float) -> T:
    """Call `probe` until it returns something true, or return its last (false) value at the timeout.

    Process state (psutil) sends no events, so it is polled; the timeout is
    generous and only bounds how long a violation takes to be reported.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(POLL_INTERVAL)


@dataclass(frozen=True)
class Death:
    slot: int
    pid: int
    status: int | None       # exit status, or None when killed by a signal
    signal: str | None


def worker_deaths(lines: list[str]) -> dict[int, Death]:
    """pid -> how the master says that worker ended."""
    deaths = {}
    for line in lines:
        match = WORKER_DEATH.search(line)
        if match:
            slot, pid, _, status, signame = match.groups()
            deaths[int(pid)] = Death(int(slot), int(pid), None if status is None else int(status), signame)
    return deaths


def count_tracebacks(lines: list[str]) -> tuple[int, int]:
    """(tracebacks, heads of injected exceptions) in `lines`.

    Counting instead of grouping lines into records: the processes share
    one stderr, so the lines of two tracebacks may interleave.
    """
    tracebacks = sum(TRACEBACK_START in line for line in lines)
    heads = sum(bool(INJECTED_HEAD.search(line)) for line in lines)
    return tracebacks, heads


def alarming_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if any(text in line for text in ALARMING)]


def socket_peers(fd_lines: list[str]) -> str:
    """What `ss -xp` says about the unix sockets among `fd_lines` (for a violation report)."""
    import subprocess
    inodes = [line.split("socket:[")[1].rstrip("]") for line in fd_lines if "socket:[" in line]
    try:
        table = subprocess.run(["ss", "-xpa"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    rows = [row for row in table.splitlines() if any(f" {inode} " in row for inode in inodes)]
    return "\nsockets:\n" + "\n".join(rows)
