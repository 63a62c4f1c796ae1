"""Server transactions (RFC 3261 §17.2, with RFC 6026's Accepted state), sans-I/O.

No sockets and no clock here: every call takes `now` (seconds, any
monotonic origin) and the caller sends the bytes it is handed back.  The
asyncio adapter (`oversipd.sip.core.sipcore`) calls `expire(now)` when
`next_deadline()` comes due.

Timers keep RFC 3261's names.  H, J and L all last 64*T1, and I lasts T4,
so the transactions waiting on each of them sit in a FIFO in deadline
order: arming and expiring one costs O(1), which matters at thousands of
transactions a second (Timer J keeps every UDP non-INVITE transaction
for 32 s).  Only Timer G (doubling) uses a heap.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from typing import Any, Callable, Hashable

T1 = 0.5    # RTT estimate
T2 = 4.0    # the longest interval between retransmissions of a non-INVITE request or an INVITE response
T4 = 5.0    # how long a message may live in the network
TIMER_H = 64 * T1   # Completed INVITE: wait this long for the ACK
TIMER_J = 64 * T1   # Completed non-INVITE over UDP: absorb retransmissions this long
TIMER_L = 64 * T1   # Accepted INVITE (RFC 6026): absorb INVITE retransmissions after a 2xx
TIMER_I = T4        # Confirmed INVITE over UDP: absorb ACK retransmissions this long
MAGIC_COOKIE = "z9hG4bK"


class State(enum.Enum):
    TRYING = "Trying"            # non-INVITE, no response yet
    PROCEEDING = "Proceeding"    # INVITE before its first response, or after a 1xx
    COMPLETED = "Completed"      # final (INVITE: non-2xx) response sent
    CONFIRMED = "Confirmed"      # INVITE: the ACK of the non-2xx came
    ACCEPTED = "Accepted"        # INVITE: a 2xx was sent (RFC 6026)
    TERMINATED = "Terminated"


class Match(enum.Enum):
    NEW = "new"                  # no transaction: a new request for the core
    RETRANSMISSION = "retransmission"
    ACK = "ack"                  # the ACK of a non-2xx final response: absorbed


class ServerTransaction:
    """One server transaction; the table moves it between states."""

    __slots__ = ("key", "is_invite", "reliable", "state", "last_response", "request_to_tag",
                 "response_to_tag", "end_at", "g_at", "g_interval", "owner", "destination")

    def __init__(self, key: Hashable, is_invite: bool, reliable: bool, request_to_tag: str | None) -> None:
        self.key = key
        self.is_invite = is_invite
        self.reliable = reliable
        self.state = State.PROCEEDING if is_invite else State.TRYING
        self.last_response: bytes | None = None
        self.request_to_tag = request_to_tag
        self.response_to_tag: str | None = None
        self.end_at: float | None = None     # when H, I, J or L fires
        self.g_at: float | None = None       # when Timer G next fires
        self.g_interval = T1
        self.owner: Any = None               # the core's request until its final response (CANCEL)
        self.destination: Any = None         # where Timer G resends (the core's choice)

    @property
    def final_sent(self) -> bool:
        return self.state not in (State.TRYING, State.PROCEEDING)

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.key!r} {self.state.value}>"


def transaction_key(method: str, branch: str | None, sent_by: tuple[str, int | None],
                    fallback: Callable[[], tuple[Any, ...]]) -> Hashable:
    """RFC 3261 §17.2.3: branch + sent-by + method (an ACK matches its INVITE).

    `fallback()` (Request-URI, From tag, Call-ID, CSeq number, top Via) keys
    a request from an RFC 2543 client, whose branch lacks the magic cookie;
    it is called only then.
    """
    method = "INVITE" if method == "ACK" else method
    if branch and branch.startswith(MAGIC_COOKIE):
        return (branch, sent_by[0].lower(), sent_by[1], method)
    return ("rfc2543", method, *fallback())


class TransactionTable:
    """Every live server transaction of one worker, and their timers."""

    def __init__(self) -> None:
        self.transactions: dict[Hashable, ServerTransaction] = {}
        self._long: deque[tuple[float, ServerTransaction]] = deque()   # H, J, L (64*T1)
        self._short: deque[tuple[float, ServerTransaction]] = deque()  # I (T4)
        self._g: list[tuple[float, int, ServerTransaction]] = []
        self._g_seq = 0
        self.timeouts = 0   # Timer H fired: the ACK never came

    def __len__(self) -> int:
        return len(self.transactions)

    # --- requests in ---------------------------------------------------------

    def match(self, key: Hashable, method: str, to_tag: str | None) -> tuple[Match, ServerTransaction | None]:
        """What a received request is to this table; with its transaction when one matched."""
        tx = self.transactions.get(key)
        if tx is None or tx.state is State.TERMINATED:
            return Match.NEW, None
        if method == "ACK":
            if not tx.is_invite or tx.state is State.ACCEPTED:
                return Match.NEW, None   # the ACK of a 2xx is a request of its own
            if isinstance(key, tuple) and key[:1] == ("rfc2543",) and to_tag != tx.response_to_tag:
                return Match.NEW, None
            return Match.ACK, tx
        if isinstance(key, tuple) and key[:1] == ("rfc2543",) and to_tag != tx.request_to_tag:
            return Match.NEW, None
        return Match.RETRANSMISSION, tx

    def create(self, key: Hashable, method: str, reliable: bool, to_tag: str | None) -> ServerTransaction:
        tx = ServerTransaction(key, method == "INVITE", reliable, to_tag)
        self.transactions[key] = tx
        return tx

    def retransmission(self, tx: ServerTransaction) -> bytes | None:
        """The response to send again for a retransmitted request (None: nothing sent yet)."""
        if tx.state in (State.PROCEEDING, State.COMPLETED, State.ACCEPTED):
            return tx.last_response
        return None

    def ack(self, tx: ServerTransaction, now: float) -> None:
        """The ACK of a non-2xx final response: Completed -> Confirmed (Timer I)."""
        if tx.state is not State.COMPLETED:
            return  # an ACK retransmission in Confirmed: absorbed
        tx.g_at = None
        if tx.reliable:
            self._terminate(tx)
            return
        tx.state = State.CONFIRMED
        tx.end_at = now + TIMER_I
        self._short.append((tx.end_at, tx))

    # --- responses out ----------------------------------------------------------

    def respond(self, tx: ServerTransaction, status: int, data: bytes, to_tag: str | None, now: float) -> None:
        """Record the response the core is sending and move the state (RFC 3261 Figures 7 and 8)."""
        if tx.final_sent:
            raise RuntimeError(f"a final response was already sent in {tx!r}")
        tx.last_response = data
        if status < 200:
            tx.state = State.PROCEEDING
            return
        tx.response_to_tag = to_tag
        tx.owner = None
        if tx.is_invite and status < 300:
            tx.state = State.ACCEPTED
            self._arm_long(tx, now + TIMER_L)
        elif tx.is_invite:
            tx.state = State.COMPLETED
            self._arm_long(tx, now + TIMER_H)
            if not tx.reliable:
                tx.g_interval = T1
                self._arm_g(tx, now + T1)
        elif tx.reliable:
            self._terminate(tx)   # Timer J is 0 on a reliable transport
        else:
            tx.state = State.COMPLETED
            self._arm_long(tx, now + TIMER_J)

    # --- timers ---------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [queue[0][0] for queue in (self._long, self._short) if queue]
        if self._g:
            deadlines.append(self._g[0][0])
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> list[tuple[ServerTransaction, bytes]]:
        """Fire every timer due at `now`; the responses Timer G retransmits."""
        for queue in (self._long, self._short):
            while queue and queue[0][0] <= now:
                at, tx = queue.popleft()
                if tx.end_at == at and tx.state is not State.TERMINATED:
                    if tx.state is State.COMPLETED and tx.is_invite:
                        self.timeouts += 1   # Timer H: no ACK
                    self._terminate(tx)
        resend = []
        while self._g and self._g[0][0] <= now:
            at, _, tx = heapq.heappop(self._g)
            if tx.g_at != at or tx.state is not State.COMPLETED:
                continue
            if tx.last_response is not None:
                resend.append((tx, tx.last_response))
            tx.g_interval = min(2 * tx.g_interval, T2)
            self._arm_g(tx, now + tx.g_interval)
        return resend

    def _arm_long(self, tx: ServerTransaction, at: float) -> None:
        tx.end_at = at
        self._long.append((at, tx))

    def _arm_g(self, tx: ServerTransaction, at: float) -> None:
        tx.g_at = at
        self._g_seq += 1
        heapq.heappush(self._g, (at, self._g_seq, tx))

    def _terminate(self, tx: ServerTransaction) -> None:
        tx.state = State.TERMINATED
        tx.end_at = tx.g_at = None
        tx.owner = tx.destination = None
        if self.transactions.get(tx.key) is tx:
            del self.transactions[tx.key]
