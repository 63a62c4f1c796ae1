"""Parallel forking (RFC 3261 §16.7): one request, several branches, one response context.

`Proxy.route(request, targets=[...])` makes a ForkContext; each target (a
registrar binding or a URI) becomes a branch, a `Forward` of the engine
with its own client transaction, DNS and Timer C.  A branch's final outcome
comes here instead of going upstream, and the context chooses what the
caller gets:

* a 2xx goes upstream at once and the other branches are CANCELled; every
  later 2xx goes upstream too (statelessly: the caller's dialogs sort them);
* a 6xx CANCELs the other branches and goes upstream at once (we do not
  wait for their 487s: the caller learns the answer a round trip sooner);
* otherwise, once every branch ended, the best final response goes up:
  the lowest class among 3xx-5xx (a 503 becomes 500, RFC 3261 §16.7 step 6);
  after a CANCEL from the caller, a branch's 487 (RFC 3261 §16.10); a 401
  or 407 carries the challenges of every branch that sent one (step 7).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..syntax.message import Request as Message, Response
from ..syntax.uri import SipUri, parse_name_addr, parse_uri
from ..transport import flows

if TYPE_CHECKING:
    from ..core.request import Request

Outcome = Any   # a Response, or a local (status, reason)
CHALLENGES = ("WWW-Authenticate", "Proxy-Authenticate")
# The engine and its Forward (one per branch) sit above this module: they are passed in, never imported.


class BranchTarget:
    """Where one branch goes: its Request-URI and the Route set in front of it (a binding's Path)."""

    __slots__ = ("ruri", "routes")

    def __init__(self, target: Any) -> None:
        if isinstance(target, (str, SipUri)):
            self.ruri = parse_uri(target) if isinstance(target, str) else target
            self.routes: tuple[str, ...] = ()
        else:   # a registrar Binding (duck-typed: this layer does not know the registrar)
            self.ruri = parse_uri(target.contact)
            self.routes = tuple(target.path)

    def apply(self, message: Message) -> None:
        message.ruri = self.ruri
        for route in reversed(self.routes):
            message.insert_header("Route", route)


def own_flow_route(message: Message, is_local: Any) -> tuple[bool, tuple[int, int] | None]:
    """A top Route of ours (a binding learnt over a connection): popped; (True, its flow or None if stale).

    A token that no longer checks (a restart made a new secret) names a
    connection that is gone: the branch fails 430 rather than loop to us.
    """
    routes = message.headers("route")
    if not routes:
        return False, None
    try:
        uri = parse_name_addr(routes[0]).uri
    except Exception:
        return False, None
    if not (uri.user or "").startswith(flows.TOKEN_PREFIX) or not is_local((uri.host or "").strip("[]").lower(),
                                                                          uri.port):
        return False, None
    message.pop_header_value("Route")
    return True, flows.decode(uri.user)


def fork(engine: Any, proxy: Any, request: "Request", targets: list[BranchTarget]) -> "asyncio.Future[Any]":
    """One branch (an engine Forward) per target, all started at once; a ForkContext picks the response."""
    future: asyncio.Future[Any] = engine.loop.create_future()
    if not targets or request.message.method == "ACK":
        raise ValueError(f"{request!r}: forking needs targets and a request that is not an ACK")
    if not engine.may_route(request, future):
        return future
    context = request._proxy = ForkContext(engine, request, future)
    for target in targets:
        forward = engine.new_forward(proxy, request, engine.loop.create_future())
        forward.context, forward.branch = context, target
        context.branches.append(forward)
    for forward in context.branches:
        engine.spawn(engine.start(forward, None))
    return future


def _rank(status: int, cancelled: bool = False) -> tuple[int, int]:
    """Lower is better among 3xx-6xx finals (RFC 3261 §16.7 step 6); a cancelled caller's 487 comes first."""
    if cancelled and status == 487:
        return (-1, status)
    return (0 if status >= 600 else status // 100, status)


class ForkContext:
    """The response context of a forked request: its branches and the best final outcome so far."""

    def __init__(self, engine: Any, request: "Request", future: "asyncio.Future[Any]") -> None:
        self.engine = engine
        self.request = request
        self.future = future
        self.branches: list[Any] = []
        self.best: Outcome = None
        self.answered = False       # a final response went upstream
        self.cancelled = False      # the caller CANCELled: it gets 487 once every branch ended
        self.challenges: list[tuple[str, str]] = []   # of every 401/407 branch, for the one sent up

    def branch_done(self, forward: Any, outcome: Outcome) -> None:
        status = outcome.status if isinstance(outcome, Response) else outcome[0]
        if 200 <= status < 300:
            self.success(forward, outcome)
            return
        if self.answered:
            return
        if status in (401, 407) and isinstance(outcome, Response):
            self.challenges += [(name, value) for name in CHALLENGES for value in outcome.headers(name)]
        if self.best is None or _rank(status, self.cancelled) < _rank(_status(self.best), self.cancelled):
            self.best = outcome
        if status >= 600:
            self.cancel_others(forward)
            self.answer(self.best)
        elif all(branch.done for branch in self.branches):
            self.answer(self.best)

    def success(self, forward: Any, response: Response) -> None:
        if self.answered:   # every 2xx reaches the caller (RFC 3261 §16.7 step 5)
            if self.request.message.method == "INVITE":
                self.engine.upstream_stateless(self.request, response)
            return
        self.cancel_others(forward)
        self.answer(response)

    def cancel_others(self, winner: Any) -> None:
        for branch in self.branches:
            if branch is not winner:
                self.engine.cancel_branch(branch)

    def cancel_all(self) -> None:
        """A CANCEL from upstream: down every pending branch; their 487s come back here."""
        self.cancelled = True
        for branch in self.branches:
            self.engine.cancel_branch(branch)

    def answer(self, outcome: Outcome) -> None:
        self.answered = True
        if not self.future.done():
            self.future.set_result(outcome)
        if self.request._final_sent:
            return
        if isinstance(outcome, Response):
            if outcome.status in (401, 407):
                self.gather_challenges(outcome)
            if outcome.status == 503:
                self.engine.core.send_reply(self.request, 500, None, None, b"")
            else:
                self.engine.core.forward_response(self.request, outcome)
        else:
            self.engine.core.send_reply(self.request, outcome[0], outcome[1], None, b"")


    def gather_challenges(self, response: Response) -> None:
        """RFC 3261 §16.7 step 7: a 401/407 going up carries the challenges of every branch."""
        for name in CHALLENGES:
            response.delete_header(name)
        for name, value in self.challenges:
            response.append_header(name, value)


def _status(outcome: Outcome) -> int:
    return outcome.status if isinstance(outcome, Response) else outcome[0]
