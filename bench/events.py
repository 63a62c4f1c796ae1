"""The harness's side of a probe's events file: a FIFO read as `EVENT PID TIME_NS` lines.

The events file is a named pipe, so the harness blocks on it until the
next event instead of polling a file; every figure comes from the
timestamps in the lines, never from when the harness happened to read them.
Every line is also copied to a plain log file next to it.
"""

from __future__ import annotations

import os
import selectors
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

WAIT_TIMEOUT = 30.0  # seconds; generous, the machine is shared


@dataclass(frozen=True)
class Event:
    kind: str
    pid: int
    t_ns: int


class EventStream:
    """Every event a daemon's probe wrote, and a way to wait for more."""

    def __init__(self, fifo: Path, log: Path) -> None:
        self.path = fifo
        os.mkfifo(fifo, 0o600)
        # Read-write: the FIFO always has a writer, so there is never EOF,
        # and a probe's non-blocking open for writing always succeeds.
        self.fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.log = open(log, "a", encoding="ascii")
        self.events: list[Event] = []
        self.partial = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)

    def drain(self) -> None:
        """Take every complete line waiting in the pipe."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            *lines, self.partial = (self.partial + chunk).split(b"\n")
            for line in lines:
                kind, pid, stamp = line.decode("ascii").split()
                self.events.append(Event(kind, int(pid), int(stamp)))
                self.log.write(line.decode("ascii") + "\n")

    def wait_for(self, predicate: Callable[[list[Event]], object], what: str,
                 timeout: float = WAIT_TIMEOUT) -> object:
        """Block until predicate(events) is truthy; return it."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            result = predicate(self.events)
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.path.name}: timed out after {timeout:g} s waiting for {what}")
            self.selector.select(remaining)

    def since(self, t_ns: int, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind and e.t_ns >= t_ns]

    def wait_count(self, kind: str, count: int, after_ns: int,
                   exclude_pids: frozenset[int] = frozenset()) -> list[Event]:
        """Wait for `count` `kind` events stamped after `after_ns` from pids not excluded."""
        def enough(events: list[Event]) -> list[Event] | None:
            found = [e for e in events if e.kind == kind and e.t_ns >= after_ns and e.pid not in exclude_pids]
            return found[:count] if len(found) >= count else None
        return self.wait_for(enough, f"{count} {kind!r} event(s)")  # type: ignore[return-value]

    def close(self) -> None:
        self.selector.close()
        os.close(self.fd)
        self.log.close()
        self.path.unlink(missing_ok=True)
