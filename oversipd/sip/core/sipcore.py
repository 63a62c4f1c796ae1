"""The SIP core of a worker: received bytes -> parse -> transaction -> `on_request` -> response.

The transports (`oversipd.sip.transport.listeners`) hand every datagram or framed
stream message to `SipCore.receive`; it stays one flat path for the common
case (a new request, a sync handler that replies).  The transaction table
is sans-I/O; this module is its asyncio adapter: it sends what the table
hands back and arms one loop timer for the table's next deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

from ...callbacks import SipEvents, is_cancellation
from ...logger import Logger
from ...resources import ResourceNotOpenError
from .. import counters as C
from ..syntax.errors import ParseError
from ..syntax.message import Request as Message, parse_message
from .limits import RETRY_AFTER_BUSY, RETRY_AFTER_RATE, Admission, Verdict
from .request import Request
from ..settings import SipSettings
from .timers import TableTimer
from ..transport.listeners import Source
from ..transaction.server import MAGIC_COOKIE, Match, State, TransactionTable, transaction_key

# Our own Via branches start with this (the proxy adds them): seeing one of
# ours with our sent-by in a received request is a loop (RFC 3261 §16.3).
OUR_BRANCH_PREFIX = MAGIC_COOKIE + "osd"
OUR_BRANCH_MARK = OUR_BRANCH_PREFIX.encode()
# Timer G is armed to this granularity: one loop wake-up serves every
# transaction due within it, instead of one per transaction.
NO_HANDLER = "no SipEvents.on_request handler: every request gets 500"
RESPONSE_START = b"SIP/2.0 "
SUPPORTED_PROXY_REQUIRE: frozenset[str] = frozenset()
# A request that needs a store which is not open (ResourceNotOpenError) gets
# 503 with this Retry-After: a worker retries its store at least this often.
RETRY_AFTER_STORE = 10
STORE_NOT_OPEN = "a request needs a store that is not open: 503 (further ones are only counted)"
# What each refusal of the admission control sends, and the counter it adds to.
REFUSALS = {
    Verdict.BUSY: (503, [("Retry-After", str(RETRY_AFTER_BUSY))], C.BUSY_503),
    Verdict.THROTTLE: (503, [("Retry-After", str(RETRY_AFTER_RATE))], C.RATE_503),
    Verdict.BLOCKED: (403, None, C.AUTH_403),
}



class SipCore(Logger):
    """One per worker: its transactions, the handler call, the responses, the counters."""

    log_id = "SIP"

    def __init__(self, settings: SipSettings, local: list[tuple[str, int]], counts: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.counts = counts                   # this slot's row of counters (memoryview of Q)
        self.table = TransactionTable()
        self.timer = TableTimer(loop, self.on_timer)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.warned_no_handler = False
        self.warned_store = False
        self.parser_bug_logged = False
        self._tag_prefix = os.urandom(4).hex()
        self._tag_count = 0
        # To tags of stateless refusals carry this mark: their ACK is absorbed, not a new request.
        self._stateless_mark = self._tag_prefix + "-"
        self.local = local
        self.proxy: Any = None   # the worker's ProxyEngine (oversipd.sip.proxy.engine), set by the service
        self.admission = Admission(settings.limits)
        self.apply_settings(settings)

    def apply_settings(self, settings: SipSettings) -> None:
        self.settings = settings
        self.admission.configure(settings.limits)
        hosts = {host for host, _ in self.local}
        if settings.advertised_host:
            hosts.add(settings.advertised_host)
        self.local_hosts = hosts | set(settings.local_domains)
        self.local_ports = {port for _, port in self.local}
        self.sent_by = {(host, port) for host in hosts for port in self.local_ports}

    # --- receiving ------------------------------------------------------------

    def receive(self, data: bytes, source: Source, address: Any) -> None:
        """One datagram or one framed stream message."""
        counts = self.counts
        counts[C.RECEIVED] += 1
        others = self.proxy and self.proxy.others
        if others is not None and (others.pass_on_foreign(data, source, address) if data[:8] == RESPONSE_START
                                   else others.pass_on_by_call(data, source, address)):
            return   # another worker's transaction or call: it parses it, not us too
        try:
            message = parse_message(data)
            if not isinstance(message, Message):
                if self.proxy is not None:
                    self.proxy.receive_response(message, source, address)
                else:
                    counts[C.DROPPED] += 1   # a response, and no proxy to match it
                return
            top = message.top_via
            method = message.method
            key = transaction_key(method, top.branch, (top.host, top.port),
                                  lambda: _rfc2543_fields(message))
            to_tag = message.to.tag
        except ParseError as error:
            self.reject(error, source, address)
            return
        except Exception as error:  # a parser bug must cost one message, not the worker
            counts[C.DROPPED] += 1
            if not self.parser_bug_logged:   # a peer must not be able to flood the log
                self.parser_bug_logged = True
                self.log_system_error(f"the parser failed on a message from {address} (further "
                                      "failures are only counted as dropped):")
                self.log_system_error(error)
            return
        match, tx = self.table.match(key, method, to_tag)
        if match is Match.NEW:
            self.new_request(data, message, method, key, to_tag, source, address)
        elif match is Match.RETRANSMISSION:
            counts[C.RETRANSMITTED] += 1
            response = self.table.retransmission(tx)
            if response is not None:
                self.send(source, address, response, None)
            elif tx.is_invite and tx.owner is not None:
                # The handler is still at work (async): a 100 stops the client's
                # retransmissions (RFC 3261 §17.2.1).
                self.send_reply(tx.owner, 100, None, None, b"")
        else:
            counts[C.RETRANSMITTED] += 1
            self.table.ack(tx, self.loop.time())

    def new_request(self, data: bytes, message: Message, method: str, key: Any, to_tag: str | None,
                    source: Source, address: Any) -> None:
        if method == "ACK":
            if to_tag is not None and to_tag.startswith(self._stateless_mark):
                self.counts[C.RETRANSMITTED] += 1   # the ACK of a stateless refusal: absorbed
                return
            # The ACK of a 2xx (or a stray one): a request of its own, never answered.
            self.run_handler(Request(message, source, address, None, self))
            return
        verdict = self.admission.judge(address[0], self.transaction_count(), self.loop.time())
        if method == "CANCEL":
            # A CANCEL of a pending INVITE is matched whatever the load: it ends a transaction.
            self.cancel(message, key, source, address, verdict)
            return
        if verdict is not Verdict.ADMIT:
            self.refuse(message, source, address, verdict)
            return
        tx = self.table.create(key, method, source.reliable, to_tag)
        request = Request(message, source, address, tx, self)
        tx.owner = request
        refusal = self.refusal(message, method, data)
        if refusal is not None:
            self.send_reply(request, *refusal)
            return
        self.run_handler(request)

    def refusal(self, message: Message, method: str, data: bytes) -> tuple[int, str | None, list | None, bytes] | None:
        """What the core answers by itself: a loop (482), Max-Forwards 0 (483), Proxy-Require (420)."""
        if OUR_BRANCH_MARK in data:   # a bytes search spares making Via objects of every request
            for via in message.via[1:]:
                branch = via.branch
                if branch and branch.startswith(OUR_BRANCH_PREFIX) and (via.host, via.port) in self.sent_by:
                    return 482, None, None, b""
        if message.max_forwards == 0 and method != "OPTIONS":
            return 483, None, None, b""
        if message.header("proxy-require") is not None:
            unsupported = [tag for tag in message.headers("proxy-require")
                           if tag.lower() not in SUPPORTED_PROXY_REQUIRE]
            if unsupported:
                return 420, None, [("Unsupported", ", ".join(unsupported))], b""
        return None

    def transaction_count(self) -> int:
        """Server and client transactions this worker holds (SIP.md §15's max_transactions)."""
        return len(self.table) + (len(self.proxy.clients) if self.proxy is not None else 0)

    def refuse(self, message: Message, source: Source, address: Any, verdict: Verdict) -> None:
        """The admission control's answer: 503 / 403 sent statelessly, or silence; counted."""
        if verdict is Verdict.SILENCE:
            self.counts[C.RATE_DROP] += 1
            return
        status, headers, counter = REFUSALS[verdict]
        self.counts[counter] += 1
        self.reply_statelessly(message, source, address, status, headers)

    def reply_statelessly(self, message: Message, source: Source, address: Any, status: int,
                          headers: list | None) -> None:
        """A final response without a transaction: a retransmission gets another one, the ACK is absorbed."""
        request = Request(message, source, address, None, self)
        if message.to.tag is None:
            self._tag_count += 1
            request._to_tag = f"{self._stateless_mark}{self._tag_count:x}"
        self.send_reply(request, status, None, headers, b"")

    def reject(self, error: ParseError, source: Source, address: Any) -> None:
        """A message that does not parse: 400 (or its status) when a request can be answered, else dropped."""
        request = error.request
        if request is None or request.method == "ACK":
            self.counts[C.DROPPED] += 1
            return
        try:
            response = request.make_response(error.status, _reason(error), to_tag=self.new_tag())
            self.send(source, address, response.to_bytes(), error.status)
        except Exception:
            self.counts[C.DROPPED] += 1

    def cancel(self, message: Message, key: Any, source: Source, address: Any, verdict: Verdict) -> None:
        """RFC 3261 §9.2: 200 to the CANCEL and 487 to its INVITE, if it is still pending; 481 without one."""
        top = message.top_via
        invite_key = transaction_key("INVITE", top.branch, (top.host, top.port),
                                     lambda: _rfc2543_fields(message))
        invite = self.table.transactions.get(invite_key)
        if invite is None:
            if verdict is Verdict.ADMIT:
                request = Request(message, source, address, self.table.create(key, "CANCEL", source.reliable,
                                                                                message.to.tag), self)
                self.send_reply(request, 481, None, None, b"")
            elif verdict is not Verdict.SILENCE:   # refused: no transaction for a CANCEL of nothing
                self.reply_statelessly(message, source, address, 481, None)
            return
        tx = self.table.create(key, "CANCEL", source.reliable, message.to.tag)
        request = Request(message, source, address, tx, self)
        self.send_reply(request, 200, None, None, b"")
        pending = invite.owner
        if pending is not None and pending._proxy is not None:
            self.proxy.cancel(pending._proxy, request)   # down the branch: its 487 comes back up
        elif pending is not None and not pending.replied:
            self.send_reply(pending, 487, None, None, b"")
            pending._cancelled = True

    # --- the handler -----------------------------------------------------------

    def run_handler(self, request: Request) -> None:
        handler = SipEvents.request_handler
        if handler is None:
            if not self.warned_no_handler:
                self.warned_no_handler = True
                self.log_system_warn(NO_HANDLER)
            if request.message.method != "ACK":
                self.send_reply(request, 500, None, None, b"")
            return
        try:
            result = handler(request)
        except BaseException as error:   # SystemExit too: a handler must not end the worker
            self.handler_failed(request, error)
            return
        if result is not None and inspect.isawaitable(result):
            task = self.loop.create_task(self.finish_async(request, result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        self.handler_done(request)

    async def finish_async(self, request: Request, awaitable: Any) -> None:
        try:
            await awaitable
        except BaseException as error:
            if is_cancellation(error):
                raise
            self.handler_failed(request, error)
            return
        self.handler_done(request)

    def handler_done(self, request: Request) -> None:
        if not request._final_sent and request.message.method != "ACK" and request._proxy is None:
            self.log_system_warn(f"SipEvents.on_request returned without replying to {request!r}: 500")
            self.send_reply(request, 500, None, None, b"")

    def handler_failed(self, request: Request, error: BaseException) -> None:
        if isinstance(error, ResourceNotOpenError):
            self.store_not_open(request)
            return
        self.log_system_error(f"SipEvents.on_request raised on {request!r}:")
        self.log_system_error(error)
        if not request._final_sent and request.message.method != "ACK" and request._proxy is None:
            try:
                self.send_reply(request, 500, None, None, b"")
            except Exception as again:
                self.log_system_error(again)

    def store_not_open(self, request: Request) -> None:
        """SIP.md §15: a request that needs a store which is not open (yet, or again) gets 503, not 500."""
        if not self.warned_store:   # the store's own retries log why; a flood must not fill the log
            self.warned_store = True
            self.log_system_warn(STORE_NOT_OPEN)
        if request._final_sent or request.message.method == "ACK" or request._proxy is not None:
            return
        self.counts[C.STORE_503] += 1
        self.send_reply(request, 503, None, [("Retry-After", str(RETRY_AFTER_STORE))], b"")

    # --- responses -----------------------------------------------------------------

    def send_reply(self, request: Request, status: int, reason: str | None,
                   headers: list | None, body: bytes) -> None:
        message = request.message
        request_tag = message.to.tag
        if status != 100 and request_tag is None:
            to_tag = request._to_tag or self.new_tag()
            request._to_tag = to_tag
        else:
            to_tag = None
        destination = request._destination
        if destination is None:
            self.stamp_via(request, force_rport=False)
            destination = request._destination = self.response_address(request)
        data = message.make_response(status, reason, to_tag=to_tag, headers=headers, body=body).to_bytes()
        self.send_response(request, status, data, to_tag or request_tag, destination)

    def forward_response(self, request: Request, response: Any) -> None:
        """A response the proxy got for `request`, upstream through its server transaction."""
        destination = request._destination
        if destination is None:
            self.stamp_via(request, force_rport=False)
            destination = request._destination = self.response_address(request)
        self.send_response(request, response.status, response.to_bytes(), response.to.tag, destination)

    def send_response(self, request: Request, status: int, data: bytes, to_tag: str | None,
                      destination: Any) -> None:
        tx = request.transaction
        if tx is not None:
            if status >= 300 and tx.is_invite and not tx.reliable:
                tx.destination = (request.source, destination)
            self.table.respond(tx, status, data, to_tag, self.loop.time())
            if tx.state is State.COMPLETED and tx.is_invite and not tx.reliable:
                self.arm_timer()
            elif not self.timer.armed and len(self.table):
                self.arm_timer()
        if status >= 200:
            request._final_sent = True
        self.send(request.source, destination, data, status)

    def send(self, source: Source, address: Any, data: bytes, status: int | None) -> bool:
        """Every SIP message this worker sends goes here: counted sent (with its class) or dropped."""
        counts = self.counts
        if source.send(data, address):
            counts[C.SENT] += 1
            if status is not None:
                counts[C.FIRST_CLASS + status // 100 - 1] += 1
            return True
        counts[C.DROPPED] += 1
        return False

    def response_address(self, request: Request) -> Any:
        """RFC 3261 §18.2.2 / RFC 3581: the source address; its port only with rport, else the Via's."""
        address = request.address
        if request.source.reliable:
            return address
        top = request.message.top_via
        if top.rport is not None:
            return address
        port = top.port or 5060
        return address if port == address[1] else (address[0], port, *address[2:])

    def stamp_via(self, request: Request, force_rport: bool) -> None:
        """RFC 3261 §18.2.1 and RFC 3581 on the top Via, before the first response copies it.

        `received` when the sent-by host is not the source IP; `rport`'s value
        when the client asked for it, or (fix_nat) whenever the source address
        is not the sent-by one.
        """
        request._destination = None   # fix_nat may change where responses go
        message = request.message
        top = message.top_via
        ip, port = request.address[0], request.address[1]
        moved = top.host != ip or (top.port or 5060) != port
        add_rport = top.rport == "" or (force_rport and moved)
        add_received = top.host != ip or add_rport
        if not add_rport and not add_received:
            return
        if add_received:
            top.params["received"] = ip
        if add_rport:
            top.params["rport"] = str(port)
        message.pop_header_value("Via")
        message.insert_header("Via", str(top))

    def new_tag(self) -> str:
        self._tag_count += 1
        return f"{self._tag_prefix}{self._tag_count:x}"

    def is_local(self, host: str, port: int | None) -> bool:
        return host in self.local_hosts and (port is None or port in self.local_ports)

    # --- timers ------------------------------------------------------------------

    def arm_timer(self) -> None:
        self.timer.arm(self.table.next_deadline())

    def on_timer(self) -> None:
        for tx, data in self.table.expire(self.loop.time()):
            if tx.destination is not None:
                source, address = tx.destination
                self.send(source, address, data, None)
        self.arm_timer()

    def close(self) -> None:
        self.timer.cancel()
        if self.proxy is not None:
            self.proxy.close()
        for task in list(self.tasks):
            task.cancel()


def _rfc2543_fields(message: Message) -> tuple[Any, ...]:
    return (str(message.ruri), message.from_.tag, message.call_id, message.cseq, str(message.top_via))


def _reason(error: ParseError) -> str:
    """A reason phrase may not hold CR or LF."""
    return " ".join(str(error.reason).split())[:200] or "Bad Request"
