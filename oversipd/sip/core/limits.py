"""Admission control (SIP.md §15): what a worker takes on under load and from hostile sources.

Policy only, no I/O and no clock of its own (`now` is passed in): the core
asks `judge()` before it creates a server transaction for a new request,
and the TCP listener asks `admit_connection()` for each accepted
connection.  Every table here is bounded, so a flood of spoofed sources
cannot grow a worker's memory either.

The rules (README "Overload"):
* `max_transactions`: while a worker holds that many server + client
  transactions, a new request gets 503 with Retry-After, sent statelessly
  (no transaction, so the refusal itself costs no memory).
* A standing receive queue: when, after a whole batch of reads, the next
  datagram in a UDP socket's queue has waited SHED_SOJOURN seconds there
  (its kernel timestamp), or when what a connection's read brought and
  left in the kernel will have waited that long (an estimate:
  stream_queue_age in transport/listeners.py), the worker is behind; new
  requests get the same 503 until a read empties that queue.  A 503 costs
  a fraction of a served request, so the queue drains, the excess hears
  503 instead of being dropped by the kernel in silence (or waiting in
  the peer's buffers), and what is accepted waits little.
  Judged by the age of what waits, not by a queue that is merely never
  empty: near a worker's capacity, with its peers on the same cores, the
  queue seldom empties for tens of milliseconds while nothing in it waits
  long, and a "never empty for 50 ms" rule shed calls a busy but
  unhurried worker could serve.
* `per_source_rate` R: a token bucket per source IP, R requests/s with a
  burst of R.  Beyond it a request gets 503 with Retry-After, at most R
  such 503s per second per source; what the source sends beyond that is
  dropped in silence, until its rate falls back under the limit.
* `auth_failures` N: the N-th failed authentication from an IP within a
  minute blocks that IP for a minute: every new request from it gets 403.
  The authentication module reports failures with `note_auth_failure`.
"""

from __future__ import annotations

import enum
from typing import Any

from ..settings import LimitSettings

RETRY_AFTER_BUSY = 5     # seconds: transactions end within 32 s, most much sooner
RETRY_AFTER_RATE = 1     # seconds: the bucket refills within one
AUTH_WINDOW = 60.0       # seconds: failures counted per minute, and the block lasts one
MAX_SOURCES = 65536      # source IPs tracked per table and worker (~10 MB at most)
# Seconds the next datagram of a UDP socket has waited in its queue, after a
# whole batch of reads, that make a worker behind: a fifth of T1, the 500 ms
# after which clients retransmit and the load grows by itself.
SHED_SOJOURN = 0.1


class Verdict(enum.Enum):
    ADMIT = "admit"
    BUSY = "busy"            # 503: the transaction table is full
    THROTTLE = "throttle"    # 503: this source is over per_source_rate
    SILENCE = "silence"      # dropped: this source is over per_source_rate and its 503s
    BLOCKED = "blocked"      # 403: too many failed authentications from this source


class Bucket:
    """One source's token bucket: `tokens` for requests served, `refusals` for 503s sent."""

    __slots__ = ("tokens", "refusals", "at")

    def __init__(self, rate: float, now: float) -> None:
        self.tokens = rate
        self.refusals = rate
        self.at = now

    def refill(self, rate: float, now: float) -> None:
        gained = (now - self.at) * rate
        self.at = now
        self.tokens = min(rate, self.tokens + gained)
        self.refusals = min(rate, self.refusals + gained)


class Failures:
    """One source's failed authentications in the current window, and how long it is blocked."""

    __slots__ = ("count", "since", "blocked_until")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.since = now
        self.blocked_until = 0.0


class Admission:
    """One per worker: the limits in force and the per-source tables they need."""

    def __init__(self, settings: LimitSettings) -> None:
        self.buckets: dict[str, Bucket] = {}
        self.failures: dict[str, Failures] = {}
        self.connections = 0   # accepted TCP connections open in this worker
        # UDP listeners and connections whose queue stood SHED_SOJOURN, not emptied since
        self.behind: set[Any] = set()
        self.configure(settings)

    def configure(self, settings: LimitSettings) -> None:
        """Limits of a (re)loaded configuration; the tables stay."""
        self.settings = settings
        self.max_transactions = settings.max_transactions
        self.rate = float(settings.per_source_rate)
        if not self.rate:
            self.buckets.clear()

    # --- requests ---------------------------------------------------------------

    def judge(self, ip: str, transactions: int, now: float) -> Verdict:
        """What a new request from `ip` gets while the worker holds `transactions`."""
        if self.failures and self.auth_blocked(ip, now):
            return Verdict.BLOCKED
        if self.rate:
            verdict = self.charge(ip, now)
            if verdict is not Verdict.ADMIT:
                return verdict
        if transactions >= self.max_transactions:
            return Verdict.BUSY
        if self.behind:
            return Verdict.BUSY
        return Verdict.ADMIT

    def queue_read(self, source: Any, waited: float | None) -> None:
        """What a read of a UDP socket or a connection found: its queue empty (`waited` None), or what waits
        there `waited` seconds old (a datagram's kernel stamp, a stream's estimate: stream_queue_age)."""
        if waited is None:
            self.behind.discard(source)   # caught up
        elif waited >= SHED_SOJOURN:
            self.behind.add(source)

    def source_gone(self, source: Any) -> None:
        """A connection closed: whatever it said of the queue goes with it."""
        self.behind.discard(source)

    def charge(self, ip: str, now: float) -> Verdict:
        """Take a token from `ip`'s bucket; a 503 token when none is left; silence after both."""
        rate = self.rate
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= MAX_SOURCES and not self.forget_idle_sources(now):
                return Verdict.ADMIT   # untracked: the transaction limit still bounds it
            bucket = self.buckets[ip] = Bucket(rate, now)
        else:
            bucket.refill(rate, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return Verdict.ADMIT
        if bucket.refusals >= 1:
            bucket.refusals -= 1
            return Verdict.THROTTLE
        return Verdict.SILENCE

    def forget_idle_sources(self, now: float) -> bool:
        """Drop the buckets that refilled completely (their sources went quiet); True when room was made."""
        full_after = 1.0   # seconds: an empty bucket of any rate refills within one
        idle = [ip for ip, bucket in self.buckets.items() if now - bucket.at >= full_after]
        for ip in idle:
            del self.buckets[ip]
        return len(self.buckets) < MAX_SOURCES

    # --- authentication failures ---------------------------------------------------

    def note_auth_failure(self, ip: str, now: float) -> None:
        limit = self.settings.auth_failures
        if not limit:
            return
        entry = self.failures.get(ip)
        if entry is None or now - entry.since >= AUTH_WINDOW and entry.blocked_until <= now:
            if entry is None and len(self.failures) >= MAX_SOURCES and not self.forget_old_failures(now):
                return
            entry = self.failures[ip] = Failures(now)
        entry.count += 1
        if entry.count >= limit:
            entry.blocked_until = now + AUTH_WINDOW

    def auth_blocked(self, ip: str, now: float) -> bool:
        entry = self.failures.get(ip)
        return entry is not None and entry.blocked_until > now

    def forget_old_failures(self, now: float) -> bool:
        old = [ip for ip, entry in self.failures.items()
               if now - entry.since >= AUTH_WINDOW and entry.blocked_until <= now]
        for ip in old:
            del self.failures[ip]
        return len(self.failures) < MAX_SOURCES

    # --- connections ------------------------------------------------------------------

    def admit_connection(self, adopted: bool = False) -> bool:
        """True (and counted) when one more accepted connection fits under max_connections.

        An `adopted` one (this slot's previous worker accepted it) is counted, never refused.
        """
        if not adopted and self.connections >= self.settings.max_connections:
            return False
        self.connections += 1
        return True

    def connection_ended(self) -> None:
        self.connections -= 1


# --- the hook for the authentication module (SIP.md §14, §15) ------------------------

def note_auth_failure(request: Any) -> None:
    """Count one failed authentication of `request` against its source IP (call it once per failure).

    Once `[limits] auth_failures` of them came from one IP within a minute,
    the core answers every new request from that IP with 403 for a minute,
    in every worker: each failure is told to the others (OtherWorkers).
    """
    core = request._core
    core.admission.note_auth_failure(request.source_ip, core.loop.time())
    if core.admission.settings.auth_failures and core.proxy is not None:
        core.proxy.others.share_auth_failure(request.source_ip)


def auth_blocked(request: Any) -> bool:
    """True while `request`'s source IP is blocked for failed authentications."""
    core = request._core
    return core.admission.auth_blocked(request.source_ip, core.loop.time())
