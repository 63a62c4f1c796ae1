"""Transaction-stateful proxying (SIP.md §10): OverSIP's `Proxy` API and the worker's forwarding engine.

`Proxy(profile)` is what a server script uses: callbacks and `route()`.
`ProxyEngine` (one per worker, `core.proxy`) does the work: it copies the
request, adds our Via (a branch naming this worker's slot), Record-Route
or Path, lowers Max-Forwards, resolves the destination (RFC 3263), sends
over UDP from the slot's own socket or over an outgoing TCP connection,
keeps the client transaction (`client_transaction.py`) and matches the
responses back: callbacks once each, then upstream through the server
transaction.  Timer C and CANCEL belong here, not to the transaction.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from ...logger import Logger
from ..transaction.client import ClientTable, ClientTransaction, Verdict, client_key, make_ack, make_cancel
from .dns import DnsError, Rfc3263Resolver, SipDestination, Target
from ..transport.flows import FLOW_FAILED, FlowTable, FlowTarget, token as flow_token
from ..syntax.message import Request as Message, Response, parse_message
from ..proxy_settings import DnsSettings, ProxySettings
from ..transport.relay import place_of
from ..core.eager import start_eagerly
from ..core.timers import TableTimer
from ..transport.outgoing import NextHops
from .accepted import AcceptedBranches
from .forking import BranchTarget, ForkContext, fork, own_flow_route
from .headers import OurHeaders
from .places import OtherWorkers
from .stray import StrayResponses
from ..syntax.uri import SipUri, parse_name_addr, parse_uri

if TYPE_CHECKING:
    from ..core.sipcore import SipCore
    from ..core.request import Request

# Timer C fires this early at the most: the loop may run a timer a hair before its time.
TIMER_C_SLACK = 0.001
TRANSPORT_ERROR = (503, "Transport Error")
REQUEST_TIMEOUT = (408, "Request Timeout")

_log = Logger("SIP proxy")
_profiles: dict[str, ProxySettings] | None = None
_dns: DnsSettings | None = None


def configure(profiles: dict[str, ProxySettings], dns: DnsSettings | None) -> None:
    """The [proxy.NAME] tables and [dns] a Proxy is made from (master and workers, at start and reload)."""
    global _profiles, _dns
    _profiles, _dns = dict(profiles), dns


class Proxy:
    """A server script's handle on one [proxy.NAME] profile (OverSIP's ::OverSIP::SIP::Proxy)."""

    def __init__(self, profile: str) -> None:
        if _profiles is None or profile not in _profiles:
            raise KeyError(f"no [proxy.{profile}] table in the configuration")
        self.settings = _profiles[profile]
        self.callbacks: dict[str, Callable[..., Any]] = {}
        # OverSIP's modules (oversipd.sip.outbound_mangling): each edits what is sent down
        # (`outgoing(engine, request, message)`) and the 2xx coming back (`success(response)`).
        self.manglers: list[Any] = []

    def on_provisional_response(self, fn: Callable[[Response], Any]) -> Callable[[Response], Any]:
        self.callbacks["provisional"] = fn
        return fn

    def on_success_response(self, fn: Callable[[Response], Any]) -> Callable[[Response], Any]:
        self.callbacks["success"] = fn
        return fn

    def on_failure_response(self, fn: Callable[[Response], Any]) -> Callable[[Response], Any]:
        self.callbacks["failure"] = fn
        return fn

    def on_canceled(self, fn: Callable[["Request"], Any]) -> Callable[["Request"], Any]:
        self.callbacks["canceled"] = fn
        return fn

    def on_invite_timeout(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        self.callbacks["invite_timeout"] = fn
        return fn

    def on_error(self, fn: Callable[[int, str], Any]) -> Callable[[int, str], Any]:
        self.callbacks["error"] = fn
        return fn

    def route(self, request: "Request", uri: SipUri | str | None = None,
              targets: list[Any] | None = None) -> "asyncio.Future[Any]":
        """Forward `request`; the future resolves to the final Response or a local (status, reason).

        `targets` (registrar bindings or URIs) forks it in parallel (RFC 3261 §16.7, proxy/forking.py).
        """
        engine = request._core.proxy
        if engine is None:
            raise RuntimeError("this worker has no SIP proxy engine (no [sip] listeners?)")
        if targets is not None:
            return fork(engine, self, request, [BranchTarget(target) for target in targets])
        return engine.route(self, request, parse_uri(uri) if isinstance(uri, str) else uri)


class Forward:
    """One routed request: its branches (one per DNS target tried), its upstream side, its outcome."""

    __slots__ = ("proxy", "request", "future", "upstream", "destination", "outgoing", "targets", "tx",
                 "provisional", "cancel_requested", "cancel_sent", "done", "timer_c", "timer_c_at", "context",
                 "branch")

    def __init__(self, proxy: Proxy, request: "Request", future: "asyncio.Future[Any]",
                 upstream: bool = True) -> None:
        self.proxy = proxy
        self.request = request
        self.future = future
        self.upstream = upstream   # False: a request of our own (uac.py), nobody to answer
        self.destination: SipUri | None = None
        self.outgoing: Message | None = None    # the request to send, before our Via and Record-Route
        self.targets: list[Target] = []
        self.tx: ClientTransaction | None = None  # the branch in progress
        self.provisional = False
        self.cancel_requested = False
        self.cancel_sent = False
        self.done = False                         # a final response (or local failure) went upstream
        self.timer_c: asyncio.TimerHandle | None = None
        self.timer_c_at = 0.0                     # loop time: a provisional response moves it on
        self.context: ForkContext | None = None   # a branch of a forked request: its outcome goes there
        self.branch: BranchTarget | None = None

    @property
    def is_invite(self) -> bool:
        return self.request.message.method == "INVITE"


class ProxyEngine(Logger):
    """One per worker: its client transactions, outgoing TCP connections, resolver and relay."""

    log_id = "SIP proxy"

    def __init__(self, core: "SipCore", slot_id: int, udp: dict[str, Any], local: dict[str, tuple[str, int]],
                 loop: asyncio.AbstractEventLoop, flows: FlowTable | None = None, generation: int = 1,
                 slots: int = 1) -> None:
        self.core = core
        self.loop = loop
        self.slot_id = slot_id
        self.generation = generation
        self.place = place_of(slot_id, generation)   # how other workers reach this one (relay.py)
        self.udp = udp                               # listener name -> UdpListener
        self.clients = ClientTable()
        self.resolver = Rfc3263Resolver(_dns or DnsSettings())
        self.next_hops = NextHops(core, loop, udp, self.spawn)
        self.accepted = AcceptedBranches(loop)   # answered INVITE branches: where their 2xx go
        self.timer = TableTimer(loop, self.on_timer)
        self.flows = flows or FlowTable(slot_id)      # the clients' connections this worker holds
        self.slots = slots                            # the workers a connection's requests spread over
        self.headers = OurHeaders(self.place, local, core.settings.advertised_host, self.flows)
        self.others = OtherWorkers(self)              # what passes between this worker and the others
        self.strays = StrayResponses(self.others, self.accepted, self.send, core.counts)
        self.pending: set[Forward] = set()            # routed, no final outcome yet
        self.idle = asyncio.Event()                   # set while `pending` is empty
        self.idle.set()

    def start_relay(self) -> None:
        """Take this slot's relay name: from now on other workers pass on what is ours.

        Called once the flows of the slot's dead predecessor are adopted: a
        request passed on for one of them meanwhile waits (OtherWorkers.pass_to_flow).
        """
        self.others.start()

    # --- routing -----------------------------------------------------------------

    def route(self, proxy: Proxy, request: "Request", uri: SipUri | None) -> "asyncio.Future[Any]":
        future: asyncio.Future[Any] = self.loop.create_future()
        if request.message.method == "ACK":
            self.spawn(self.forward_ack(proxy, request, uri, future))
            return future
        if not self.may_route(request, future):
            return future
        self.begin(self.new_forward(proxy, request, future), uri)
        return future

    def may_route(self, request: "Request", future: "asyncio.Future[Any]") -> bool:
        if request._final_sent or request._proxy is not None:
            raise RuntimeError(f"{request!r} was already answered or routed")
        if request.message.max_forwards == 0:   # RFC 3261 §16.3 step 2 (the core lets OPTIONS through)
            request.reply(483)
            _finish(future, (483, "Too Many Hops"))
            return False
        if request._destination is None:   # the Via stamped now: the copy sent down carries it
            self.core.stamp_via(request, force_rport=False)
            request._destination = self.core.response_address(request)
        if request.message.method == "INVITE":
            self.core.send_reply(request, 100, None, None, b"")
        return True

    def new_forward(self, proxy: Proxy, request: Any, future: "asyncio.Future[Any]",
                    upstream: bool = True) -> Forward:
        """A Forward counted as pending until its outcome (a routed request, a forked branch, a UAC's)."""
        forward = Forward(proxy, request, future, upstream)
        self.pending.add(forward)
        self.idle.clear()
        return forward

    def originate(self, proxy: Proxy, request: Any, uri: SipUri | None) -> "asyncio.Future[Any]":
        """A request of our own (oversipd.sip.proxy.uac): the same client transaction, nobody upstream."""
        future: asyncio.Future[Any] = self.loop.create_future()
        self.begin(self.new_forward(proxy, request, future, upstream=False), uri)
        return future

    def begin(self, forward: Forward, uri: SipUri | None) -> None:
        forward.request._proxy = forward
        self.spawn(self.start(forward, uri))

    async def start(self, forward: Forward, uri: SipUri | None) -> None:
        try:
            await self.resolve_and_send(forward, uri)
        except Exception as error:   # a bug here must cost this request a 500, not leave it unanswered
            self.log_system_error(f"routing {forward.request!r} failed:")
            self.log_system_error(error)
            self.fail(forward, 500, "Server Internal Error")

    async def resolve_and_send(self, forward: Forward, uri: SipUri | None) -> None:
        message = forward.request.message.copy()   # upstream responses use the original
        flow = forward.request._flow if uri is None else None
        if forward.branch is not None:   # a forked branch: its contact, behind its Path
            forward.branch.apply(message)
            ours, flow = own_flow_route(message, self.core.is_local)
            if ours and flow is None:
                self.fail(forward, *FLOW_FAILED)
                return
        forward.destination = uri or next_hop(message)
        if forward.upstream:   # ours starts at 70 (uac.py)
            lower_max_forwards(message)
        for mangler in forward.proxy.manglers:
            mangler.outgoing(self, forward.request, message)
        forward.outgoing = message
        if flow is not None:   # a Route with our flow token: over that client's connection, no DNS
            forward.targets = [FlowTarget(*flow)]
            await self.try_next_target(forward)
            return
        try:
            forward.targets = await self.resolver.resolve(_destination_of(forward.destination),
                                                          forward.proxy.settings)
        except DnsError as error:
            self.fail(forward, error.status, error.reason)
            return
        await self.try_next_target(forward)

    async def try_next_target(self, forward: Forward) -> None:
        """Send to the next DNS target; a transport error moves on (dns_failover_on_503) or fails."""
        failure = TRANSPORT_ERROR
        while forward.targets and not forward.done:
            if forward.cancel_requested and forward.tx is None:
                self.terminated_before_sending(forward)   # cancelled while DNS was asked
                return
            target = forward.targets.pop(0)
            if await self.send_to(forward, target):
                return
            failure = getattr(target, "failure", TRANSPORT_ERROR)
            if not forward.proxy.settings.dns_failover_on_503:
                break
        self.fail(forward, *failure)

    async def send_to(self, forward: Forward, target: Target) -> bool:
        try:
            source, address = await self.transport_for(target, forward.destination.host,
                                                       forward.proxy.settings.callback_on_server_tls_handshake)
        except OSError as error:
            self.log_system_info(f"cannot reach {target.transport}:{target.ip}:{target.port}: {error}")
            return False
        if forward.done:
            return True
        message = forward.outgoing.copy()   # each branch adds its own Via (and Record-Route)
        branch = self.headers.new_branch()
        request = forward.request
        # A client's connection: the Route toward it names its flow (oversipd.sip.transport.flows).
        self.headers.add(message, forward.proxy.settings.do_record_routing and forward.upstream, request.transport,
                         getattr(request.source, "flow", None), target.transport, branch,   # a UAC's: no source
                         flow_token(target.slot_id, target.flow_id, target.transport)
                         if isinstance(target, FlowTarget) else None)
        data = message.to_bytes()
        settings = forward.proxy.settings
        timeout = settings.timer_B if forward.is_invite else settings.timer_F
        tx = self.clients.create(branch, message, data, source.reliable, timeout, self.loop.time())
        tx.owner = forward
        tx.destination = (source, address)
        forward.tx = tx
        if not self.send(source, address, data):
            self.clients.terminate(tx)
            return False
        if forward.is_invite:
            self.arm_timer_c(forward)
        self.arm_timer()
        return True

    async def forward_ack(self, proxy: Proxy, request: "Request", uri: SipUri | None,
                          future: "asyncio.Future[Any]") -> None:
        """The ACK of a 2xx travels end to end, statelessly: no transaction, no response."""
        message = request.message.copy()
        destination = uri or next_hop(message)
        lower_max_forwards(message)
        flow = request._flow if uri is None else None   # a Route with our flow token: that client's
        try:                                             # connection (a browser's Contact is a .invalid host)
            target = FlowTarget(*flow) if flow else (await self.resolver.resolve(_destination_of(destination),
                                                                                  proxy.settings))[0]
            source, address = await self.transport_for(target, destination.host)
        except (DnsError, OSError) as error:
            self.log_system_info(f"an ACK for {destination} is dropped: {error}")
            _finish(future, None)
            return
        message.insert_header("Via", self.headers.via(target.transport, self.headers.new_branch()))
        self.send(source, address, message.to_bytes())
        _finish(future, None)

    # --- transports out -------------------------------------------------------------

    async def transport_for(self, target: Target | FlowTarget, host: str | None = None,
                            tls_event: bool = False) -> tuple[Any, Any]:
        """Something to send through toward `target`; `host` is the name a TLS server must prove."""
        if isinstance(target, FlowTarget):
            return self.others.flow_source(target)
        address = (target.ip, target.port)
        return await self.next_hops.source_for(target.transport, address, (host or "").strip("[]") or None,
                                               tls_event), address

    def flow_gone(self, branch: str, method: str, outcome: tuple[int, str] = FLOW_FAILED) -> None:
        """The flow a request of ours was passed to is gone: 430 upstream (SIP.md §10); or `outcome`."""
        tx = self.clients.transactions.get(client_key(branch, method))
        if tx is None:
            return
        forward = self.clients.terminate(tx)
        if forward is not None and tx is forward.tx:
            self.fail(forward, *outcome)

    def send(self, source: Any, address: Any, data: bytes) -> bool:
        return self.core.send(source, address, data, None)

    # --- responses in ----------------------------------------------------------------

    def receive_response(self, response: Response, source: Any, address: Any) -> None:
        tx = self.clients.match(response)
        if tx is None:
            self.strays.receive(response, source, address)
            return
        forward = tx.owner          # read first: a transaction that ends lets go of it
        verdict = self.clients.receive(tx, response.status, self.loop.time())
        if verdict is Verdict.ABSORB:
            if tx.ack is not None:    # the final response again: our ACK was lost
                self.send(*tx.destination, tx.ack)
            return
        if forward is None:
            return   # the response to our CANCEL
        response.pop_header_value("Via")
        response.request = forward.request   # OverSIP's `response.request`, for the callbacks
        if response.status < 200:
            self.provisional(forward, response)
        else:
            self.final(forward, tx, response)
        self.arm_timer()

    def provisional(self, forward: Forward, response: Response) -> None:
        forward.provisional = True
        if forward.is_invite and not forward.done:
            self.arm_timer_c(forward)   # RFC 3261 §16.7 step 2: a provisional response restarts Timer C
        if forward.cancel_requested and not forward.cancel_sent:
            self.send_cancel(forward)
        if response.status == 100 or forward.done:
            return   # 100 is hop by hop
        self.run_callback(forward, "provisional", response)
        if forward.upstream and not forward.request._final_sent:
            self.core.forward_response(forward.request, response)

    def final(self, forward: Forward, tx: ClientTransaction, response: Response) -> None:
        status = response.status
        if tx.is_invite and status >= 300:
            ack = make_ack(tx.request, response).to_bytes()   # hop by hop (RFC 3261 §17.1.1.3)
            tx.ack = ack
            self.send(*tx.destination, ack)
        if tx is not forward.tx:
            return   # an earlier branch, given up
        if tx.is_invite and status < 300 and forward.upstream:
            self.accepted.add(tx.key[0], forward.request.source, forward.request._destination)
        if forward.done:
            # A 2xx after our 408 still reaches the caller (RFC 3261 §16.7).
            if tx.is_invite and status < 300 and forward.upstream:
                self.upstream_stateless(forward.request, response)
            return
        if status == 503 and forward.targets and forward.proxy.settings.dns_failover_on_503 \
                and not forward.cancel_requested:
            self.log_system_info(f"503 from {tx.destination[1]}: trying the next DNS target")
            self.spawn(self.try_next_target(forward))
            return
        if status < 300:
            for mangler in forward.proxy.manglers:
                mangler.success(response)
        self.run_callback(forward, "success" if status < 300 else "failure", response)
        self.finish(forward, response)
        self.answer_caller(forward, response)

    def upstream_stateless(self, request: "Request", response: Response) -> None:
        self.send(request.source, request._destination, response.to_bytes())

    # --- CANCEL, timeouts, failures ------------------------------------------------------

    def cancel(self, forward: Forward, cancel: "Request") -> None:
        """A CANCEL from upstream (answered 200 by the core): down the pending branch, which ends 487."""
        if isinstance(forward, ForkContext):
            forward.cancel_all()
            forward = forward.branches[0]
        elif forward.done or forward.cancel_requested:
            return
        self.run_callback(forward, "canceled", cancel)
        self.cancel_branch(forward)

    def cancel_branch(self, forward: Forward) -> None:
        if forward.done or forward.cancel_requested:
            return
        forward.cancel_requested = True
        if forward.provisional:
            self.send_cancel(forward)
        # else: RFC 3261 §9.1: a CANCEL waits for a provisional response

    def terminated_before_sending(self, forward: Forward) -> None:
        self.finish(forward, (487, "Request Terminated"))
        self.answer_caller(forward, (487, "Request Terminated"))

    def send_cancel(self, forward: Forward) -> None:
        tx = forward.tx
        if tx is None or tx.final_received:
            return
        forward.cancel_sent = True
        cancel = make_cancel(tx.request)
        data = cancel.to_bytes()
        source, address = tx.destination
        ctx = self.clients.create(tx.key[0], cancel, data, tx.reliable,
                                  forward.proxy.settings.timer_F, self.loop.time())
        ctx.destination = tx.destination
        self.send(source, address, data)
        self.arm_timer()

    def arm_timer_c(self, forward: Forward) -> None:
        """(Re)start Timer C: its deadline moves; the loop timer, armed once, catches up when it fires
        (a loop timer per provisional response cost a cancel and a new one each)."""
        forward.timer_c_at = self.loop.time() + forward.proxy.settings.timer_C
        if forward.timer_c is None:
            forward.timer_c = self.loop.call_at(forward.timer_c_at, self.timer_c_fired, forward)

    def timer_c_fired(self, forward: Forward) -> None:
        forward.timer_c = None
        if forward.done:
            return
        if forward.timer_c_at - self.loop.time() > TIMER_C_SLACK:   # restarted since it was armed
            forward.timer_c = self.loop.call_at(forward.timer_c_at, self.timer_c_fired, forward)
            return
        if forward.provisional:
            self.send_cancel(forward)   # the branch is given up downstream too
        self.fail(forward, *REQUEST_TIMEOUT, invite_timeout=True)

    def fail(self, forward: Forward, status: int, reason: str, invite_timeout: bool = False) -> None:
        """No final response to forward: a timeout, a transport or a DNS error."""
        if forward.done:
            return
        if invite_timeout and forward.is_invite:
            self.run_callback(forward, "invite_timeout")
        else:
            self.run_callback(forward, "error", status, reason)
        self.finish(forward, (status, reason))
        self.answer_caller(forward, (status, reason))

    def answer_caller(self, forward: Forward, outcome: Any) -> None:
        """A final response, or a local (status, reason), to the caller; a forked branch's to its context;
        nothing for a request of our own (uac.py)."""
        if forward.context is not None:
            forward.context.branch_done(forward, outcome)
        elif not forward.upstream:
            return
        elif isinstance(outcome, Response):
            self.core.forward_response(forward.request, outcome)
        elif not forward.request._final_sent:
            self.core.send_reply(forward.request, outcome[0], outcome[1], None, b"")

    def finish(self, forward: Forward, outcome: Any) -> None:
        forward.done = True
        forward.outgoing = None   # no branch starts any more
        self.pending.discard(forward)
        if not self.pending:
            self.idle.set()
        if forward.timer_c is not None:
            forward.timer_c.cancel()
            forward.timer_c = None
        if forward.request._proxy is forward:
            # Request and Forward point at each other (and a script's callbacks at the request):
            # let go now, so that a call leaves the cycle collector nothing to free.
            forward.request._proxy = None
        _finish(forward.future, outcome)

    def run_callback(self, forward: Forward, name: str, *args: Any) -> None:
        """A callback that raises is logged; the response goes on upstream all the same."""
        callback = forward.proxy.callbacks.get(name)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as error:
            self.log_system_error(f"the proxy's on_{_CALLBACK_NAMES[name]} callback raised:")
            self.log_system_error(error)

    # --- timers ---------------------------------------------------------------------------

    def arm_timer(self) -> None:
        self.timer.arm(self.clients.next_deadline())

    def on_timer(self) -> None:
        resend, timeouts = self.clients.expire(self.loop.time())
        for tx, data in resend:
            self.send(*tx.destination, data)
        for tx, _, forward in timeouts:
            if forward is not None and tx is forward.tx:
                self.fail(forward, *REQUEST_TIMEOUT, invite_timeout=True)
        self.arm_timer()

    # --- life ---------------------------------------------------------------------------------

    def spawn(self, coroutine: Any) -> None:
        """Our routing coroutines run at once; only one that waits (DNS, a connection) becomes a Task."""
        start_eagerly(self.loop, coroutine, self.core.tasks, self.coroutine_failed)

    def coroutine_failed(self, error: BaseException) -> None:
        self.log_system_error("a routing coroutine raised:")
        self.log_system_error(error)

    def close(self) -> None:
        self.others.close()
        self.timer.cancel()
        self.accepted.close()
        self.next_hops.close()


def next_hop(message: Message) -> SipUri:
    """RFC 3261 §16.6 steps 6-7: a loose router's Route URI; a strict router becomes the Request-URI."""
    routes = message.headers("route")
    if not routes:
        return message.ruri
    top = parse_name_addr(routes[0]).uri
    if "lr" in top.params:
        return top
    message.pop_header_value("Route")   # a strict router: it gets the Request-URI's place
    message.append_header("Route", f"<{message.ruri}>")
    message.ruri = top
    return top


def lower_max_forwards(message: Message) -> None:
    value = message.max_forwards
    message.set_header("Max-Forwards", str(69 if value is None else max(value - 1, 0)))


_CALLBACK_NAMES = {"provisional": "provisional_response", "success": "success_response",
                   "failure": "failure_response", "canceled": "canceled",
                   "invite_timeout": "invite_timeout", "error": "error"}


def _destination_of(uri: SipUri) -> SipDestination:
    return SipDestination(uri.scheme, (uri.host or "").strip("[]"), uri.port, uri.transport)


def _finish(future: "asyncio.Future[Any]", outcome: Any) -> None:
    if not future.done():
        future.set_result(outcome)
