"""Answered INVITE branches: where the retransmissions of their 2xx go, for a while.

After a 2xx ends the INVITE client transaction (RFC 3261 §17.1.1.2), the
UAS resends that 2xx until the end-to-end ACK arrives; the proxy still
passes those upstream, statelessly, for ACCEPTED_LINGER seconds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ..core.timers import TableTimer

ACCEPTED_LINGER = 32.0


class AcceptedBranches:
    """Branch -> (source, address) upstream: only that, not the branch's whole Forward.

    Holding the Forward for 32 s made the cycle collector walk every call of
    the last 32 s.  Every branch lingers as long, so they expire in the order
    accepted: one loop timer for the oldest, not one each (32 s of them
    crowded the loop's heap).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.upstreams: dict[str, tuple[Any, Any]] = {}
        self.order: deque[tuple[float, str]] = deque()   # (expiry, branch)
        self.timer = TableTimer(loop, self.forget_expired)

    def add(self, branch: str, source: Any, address: Any) -> None:
        self.upstreams[branch] = (source, address)
        expiry = self.loop.time() + ACCEPTED_LINGER
        self.order.append((expiry, branch))
        self.timer.arm(expiry)

    def upstream(self, branch: str) -> tuple[Any, Any] | None:
        return self.upstreams.get(branch)

    def forget_expired(self) -> None:
        """The accepted branches whose linger is over (up to TIMER_GRANULARITY late)."""
        now = self.loop.time()
        order = self.order
        while order and order[0][0] <= now:
            self.upstreams.pop(order.popleft()[1], None)
        if order:
            self.timer.arm(order[0][0])

    def close(self) -> None:
        self.timer.cancel()
