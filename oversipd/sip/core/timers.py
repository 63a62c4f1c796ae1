"""One loop timer per transaction table (server or client), armed for the table's earliest deadline.

The transaction state machines keep their deadlines themselves (sans-I/O,
time passed in); the asyncio side only needs to wake up when the earliest
one comes due, never sooner than TIMER_GRANULARITY from now, so that a
burst of transactions costs one timer, not one each.
"""

from __future__ import annotations

import asyncio
from typing import Callable

TIMER_GRANULARITY = 0.02  # seconds


class TableTimer:
    """Calls `on_due()` once the deadline last given to `arm()` has come (the earliest wins)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[], None]) -> None:
        self.loop = loop
        self.on_due = on_due
        self.handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self.handle is not None

    def arm(self, deadline: float | None) -> None:
        if deadline is None:
            return
        at = max(deadline, self.loop.time() + TIMER_GRANULARITY)
        if self.handle is not None:
            if self.handle.when() <= at:
                return
            self.handle.cancel()
        self.handle = self.loop.call_at(at, self._fire)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _fire(self) -> None:
        self.handle = None
        self.on_due()
