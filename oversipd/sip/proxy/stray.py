"""Responses that match no client transaction of this worker, and where they go.

Three kinds reach a worker without a transaction of its own: another
worker's (its branch names that worker's place: passed on over the relay),
the retransmitted 2xx of an answered INVITE branch (the ACCEPTED_LINGER
table: upstream, statelessly), and the response to a branch whose worker
died between the request and the answer (RFC 3261 §16.7: upstream by the
next Via, as a stateless proxy sends it).  Anything else is dropped and
counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .. import counters as C
from ..syntax.message import Response
from .accepted import AcceptedBranches
from .headers import place_of_branch

if TYPE_CHECKING:
    from .places import OtherWorkers

Send = Callable[[Any, Any, bytes], bool]


class StrayResponses:
    """A worker's answer to responses its client transactions do not know."""

    def __init__(self, others: "OtherWorkers", accepted: AcceptedBranches, send: Send, counts: Any) -> None:
        self.others = others
        self.accepted = accepted
        self.send = send
        self.counts = counts

    def receive(self, response: Response, source: Any, address: Any) -> None:
        branch = response.top_via.branch or ""
        place = place_of_branch(branch)
        if place is not None and self.others.pass_to_place(place, response.to_bytes(), source, address):
            return
        upstream = self.accepted.upstream(branch)
        if upstream is not None and 200 <= response.status < 300:
            response.pop_header_value("Via")
            self.send(*upstream, response.to_bytes())
            return
        if place is not None and self.forward_statelessly(response, source):
            return
        self.counts[C.DROPPED] += 1

    def forward_statelessly(self, response: Response, source: Any) -> bool:
        """Our Via off, to the next Via's received/rport.

        A 2xx whose branch died with its worker (killed between the INVITE and
        the answer) reached nobody before (the soak's lost calls).  Over UDP
        only: an upstream connection is a flow that another worker may hold,
        and its client resends.
        """
        if source.reliable:
            return False
        response.pop_header_value("Via")
        try:
            vias = response.via
            upstream = vias[0] if vias else None
            if upstream is None or upstream.transport != "UDP":
                return False
            port = int(upstream.rport) if upstream.rport else upstream.port or 5060
        except ValueError:   # a peer's bad Via (a ParseError) or rport: dropped
            return False
        return self.send(source, (upstream.received or upstream.host.strip("[]"), port), response.to_bytes())
