"""Client transactions (RFC 3261 §17.1), sans-I/O: the proxy's side towards the next hop.

As in `transaction.py`, no socket and no clock: every call takes `now` and
the caller sends what it is handed back.  Timers keep RFC 3261's names:
A (INVITE retransmission), B (INVITE timeout), D (Completed INVITE absorbs
response retransmissions), E (non-INVITE retransmission), F (non-INVITE
timeout), K (Completed non-INVITE).  Timer C (a proxy's INVITE without a
final response) belongs to the proxy, not to the transaction.

Responses match a transaction by the branch of their top Via and the CSeq
method (RFC 3261 §17.1.3); the caller strips our Via afterwards.
"""

from __future__ import annotations

import enum
import heapq
from typing import Any, Hashable

from ..syntax.message import Request as Message, Response
from .server import T1, T2, T4

TIMER_D = 32.0      # Completed INVITE over UDP: at least 32 s (0 over a reliable transport)
TIMER_K = T4        # Completed non-INVITE over UDP (0 over a reliable transport)


class ClientState(enum.Enum):
    CALLING = "Calling"          # INVITE sent, no response yet
    TRYING = "Trying"            # non-INVITE sent, no response yet
    PROCEEDING = "Proceeding"    # a 1xx came
    COMPLETED = "Completed"      # a final (INVITE: non-2xx) response came
    TERMINATED = "Terminated"


class Verdict(enum.Enum):
    """What the caller does with a response matched to a transaction."""

    PASS = "pass"                # hand it to the transaction user (the proxy)
    ABSORB = "absorb"            # a retransmission the transaction already handled


class Timeout(enum.Enum):
    B = "B"
    F = "F"


class ClientTransaction:
    """One request sent to one next hop."""

    __slots__ = ("key", "method", "is_invite", "reliable", "state", "request", "data", "ack",
                 "interval", "resend_at", "timeout_at", "end_at", "owner", "destination")

    def __init__(self, key: Hashable, request: Message, data: bytes, reliable: bool) -> None:
        self.key = key
        self.method = request.method
        self.is_invite = request.method == "INVITE"
        self.reliable = reliable
        self.state = ClientState.CALLING if self.is_invite else ClientState.TRYING
        self.request = request           # as sent: the ACK of a non-2xx is made from it
        self.data = data
        self.ack: bytes | None = None    # the ACK sent for a non-2xx final response (resent on its retransmissions)
        self.interval = T1
        self.resend_at: float | None = None   # Timer A or E
        self.timeout_at: float | None = None  # Timer B or F
        self.end_at: float | None = None      # Timer D or K
        self.owner: Any = None                # the proxy's branch
        self.destination: Any = None          # where the caller sends (its choice)

    @property
    def final_received(self) -> bool:
        return self.state in (ClientState.COMPLETED, ClientState.TERMINATED)

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.method} {self.key!r} {self.state.value}>"


def client_key(branch: str, method: str) -> Hashable:
    """RFC 3261 §17.1.3: the branch and the CSeq method (a CANCEL has a transaction of its own)."""
    return (branch, "INVITE" if method == "ACK" else method)


class ClientTable:
    """Every live client transaction of one worker, and their timers (one heap, lazily cleaned)."""

    def __init__(self) -> None:
        self.transactions: dict[Hashable, ClientTransaction] = {}
        # Timer entries name their transaction by key: an entry outlives the
        # transaction (Timer B's lies 32 s ahead) and must not keep it, and all
        # it holds (the proxy's whole branch), alive for the cycle collector.
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self.transactions)

    def create(self, branch: str, request: Message, data: bytes, reliable: bool, timeout: float,
               now: float) -> ClientTransaction:
        """The transaction of a request about to be sent; `timeout` is Timer B or F (the profile's)."""
        tx = ClientTransaction(client_key(branch, request.method), request, data, reliable)
        self.transactions[tx.key] = tx
        tx.timeout_at = now + timeout
        self._push(tx.timeout_at, tx)
        if not reliable:
            tx.resend_at = now + T1
            self._push(tx.resend_at, tx)
        return tx

    def match(self, response: Response) -> ClientTransaction | None:
        branch = response.top_via.branch
        if branch is None:
            return None
        return self.transactions.get(client_key(branch, response.cseq_method))

    def receive(self, tx: ClientTransaction, status: int, now: float) -> Verdict:
        """Move `tx` on a response (RFC 3261 Figures 5 and 6)."""
        state = tx.state
        if state is ClientState.TERMINATED:
            return Verdict.ABSORB
        if state is ClientState.COMPLETED:
            return Verdict.ABSORB   # a retransmitted final response (INVITE: the caller resends the ACK)
        if status < 200:
            tx.state = ClientState.PROCEEDING
            if tx.is_invite:
                tx.resend_at = None   # Timer A stops at the first response
                tx.timeout_at = None  # Timer B too: Timer C (the proxy's) takes over
            elif not tx.reliable:
                tx.interval = T2      # Timer E goes on at T2 in Proceeding
            return Verdict.PASS
        tx.resend_at = tx.timeout_at = None
        if tx.is_invite and status < 300:
            self.terminate(tx)    # a 2xx ends the INVITE client transaction (the proxy forwards more 2xx statelessly)
            return Verdict.PASS
        if tx.reliable:
            self.terminate(tx)
            return Verdict.PASS
        tx.state = ClientState.COMPLETED
        tx.end_at = now + (TIMER_D if tx.is_invite else TIMER_K)
        self._push(tx.end_at, tx)
        return Verdict.PASS

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._live(heap[0][0], heap[0][2]) is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> tuple[list[tuple[ClientTransaction, bytes]],
                                          list[tuple[ClientTransaction, Timeout, Any]]]:
        """Fire every timer due at `now`: the requests to resend (A, E) and the timeouts (B, F) with their owners."""
        resend, timeouts = [], []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            tx = self._live(at, key)
            if tx is None:
                continue
            if at == tx.timeout_at:
                kind = Timeout.B if tx.is_invite else Timeout.F
                timeouts.append((tx, kind, self.terminate(tx)))
            elif at == tx.end_at:
                self.terminate(tx)
            elif at == tx.resend_at:
                resend.append((tx, tx.data))
                if tx.is_invite:
                    tx.interval *= 2                          # Timer A doubles until Timer B
                elif tx.state is ClientState.TRYING:
                    tx.interval = min(2 * tx.interval, T2)    # Timer E doubles up to T2
                else:
                    tx.interval = T2                          # Proceeding: every T2
                tx.resend_at = now + tx.interval
                self._push(tx.resend_at, tx)
        return resend, timeouts

    def terminate(self, tx: ClientTransaction) -> Any:
        """End `tx` and let go of its owner, returned: the two point at each other, and no cycle may outlive a call."""
        tx.state = ClientState.TERMINATED
        tx.resend_at = tx.timeout_at = tx.end_at = None
        if self.transactions.get(tx.key) is tx:
            del self.transactions[tx.key]
        owner, tx.owner = tx.owner, None
        return owner

    def _push(self, at: float, tx: ClientTransaction) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, tx.key))

    def _live(self, at: float, key: Hashable) -> ClientTransaction | None:
        """The transaction a timer entry is for, if that timer still stands."""
        tx = self.transactions.get(key)
        if tx is None or tx.state is ClientState.TERMINATED or at not in (tx.resend_at, tx.timeout_at, tx.end_at):
            return None
        return tx


def make_ack(request: Message, response: Response) -> Message:
    """RFC 3261 §17.1.1.3: the ACK of a non-2xx final response, sent hop by hop.

    Request-URI, Call-ID, From, the top Via and the Route headers come from
    the request; To (with its tag) from the response; CSeq keeps the number.
    """
    return _hop_by_hop("ACK", request, response.header("to") or "")


def make_cancel(request: Message) -> Message:
    """RFC 3261 §9.1: the CANCEL of a request we sent, on its branch (the same top Via)."""
    return _hop_by_hop("CANCEL", request, request.header("to") or "")


def _hop_by_hop(method: str, request: Message, to: str) -> Message:
    headers = [("Via", request.headers("via")[0])]
    headers += [("Route", value) for value in request.headers("route")]
    headers += [("Max-Forwards", "70"), ("From", request.header("from") or ""),
                ("To", to), ("Call-ID", request.call_id),
                ("CSeq", f"{request.cseq} {method}"), ("Content-Length", "0")]
    return Message(method, request.ruri.copy(), headers)
