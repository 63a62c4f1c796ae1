"""The request object a server script's `SipEvents.on_request` handler gets (SIP.md §9).

It wraps the parsed message (`request.message`) with what the worker knows
about where it came from, and replies through the server transaction.
Names follow OverSIP's Ruby API (`sip_method`, `ruri`, `from_`, ...).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Protocol

from ..transport import flows
from ..syntax.errors import ParseError
from ..syntax.uri import parse_name_addr

if TYPE_CHECKING:
    from ..transport.listeners import Source
    from ..syntax.message import Request as Message
    from ..transaction.server import ServerTransaction
    from ..syntax.uri import NameAddr, SipUri, Via

DEFAULT_MAX_FORWARDS = 70
# RFC 5626 §4.2.1 / §4.3: what a UA may ask Outbound for (REGISTER, or a request that forms a dialog).
OUTBOUND_METHODS = frozenset(("REGISTER", "INVITE", "SUBSCRIBE", "REFER"))
SECURE_TRANSPORTS = ("tls", "wss")
WEBSOCKET_TRANSPORTS = ("ws", "wss")


class Core(Protocol):
    """What a request needs of the worker's SIP core (sipcore.SipCore): it never builds one."""

    def send_reply(self, request: "Request", status: int, reason: str | None,
                   headers: Any, body: bytes) -> None: ...

    def is_local(self, host: str, port: int | None) -> bool: ...

    def stamp_via(self, request: "Request", force_rport: bool) -> None: ...


class Request:
    """One received request; `reply()` answers it once with a final response."""

    __slots__ = ("message", "source", "address", "transaction", "cvars", "_core", "_to_tag",
                 "_final_sent", "_cancelled", "_destination", "_proxy", "_flow")

    def __init__(self, message: "Message", source: "Source", address: Any,
                 transaction: "ServerTransaction | None", core: "Core") -> None:
        self.message = message
        self.source = source          # the listener (or TCP connection) it came in on
        self.address = address        # the peer's socket address
        self.transaction = transaction
        self.cvars: dict[str, Any] = {}
        self._core = core
        self._to_tag: str | None = None
        self._final_sent = False
        self._cancelled = False       # a CANCEL was answered 487 for us
        self._destination: Any = None  # where responses go; set (and the Via stamped) at the first reply
        self._proxy: Any = None        # the proxy's Forward once route() took it
        self._flow: tuple[int, int, str] | None = None   # (slot, flow id, transport) named by a Route loose_route() removed

    # --- what came in -----------------------------------------------------------

    @property
    def sip_method(self) -> str:
        return self.message.method

    @property
    def ruri(self) -> "SipUri":
        return self.message.ruri

    @ruri.setter
    def ruri(self, value: "SipUri | str") -> None:
        self.message.ruri = value

    @property
    def from_(self) -> "NameAddr":
        return self.message.from_

    @property
    def to(self) -> "NameAddr":
        return self.message.to

    @property
    def call_id(self) -> str:
        return self.message.call_id

    @property
    def cseq(self) -> int:
        return self.message.cseq

    @property
    def via(self) -> "list[Via]":
        return self.message.via

    @property
    def max_forwards(self) -> int | None:
        return self.message.max_forwards

    @property
    def body(self) -> bytes:
        return self.message.body

    @body.setter
    def body(self, value: bytes) -> None:
        self.message.body = value

    @property
    def transport(self) -> str:
        return self.source.transport

    @property
    def secure(self) -> bool:
        """It came over TLS (tls, wss)."""
        return self.source.transport in SECURE_TRANSPORTS

    @property
    def websocket(self) -> bool:
        return self.source.transport in WEBSOCKET_TRANSPORTS

    @property
    def connection(self) -> Any:
        """The client's connection it came over (its `cvars`, `close()`, ...), None over UDP."""
        return None if self.source.transport == "udp" else self.source

    @property
    def source_ip(self) -> str:
        return self.address[0]

    @property
    def source_port(self) -> int:
        return self.address[1]

    @property
    def in_dialog(self) -> bool:
        return self.message.to.tag is not None

    @property
    def replied(self) -> bool:
        """True once a final response was sent (or a CANCEL ended it with 487)."""
        return self._final_sent

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def to_flow(self) -> bool:
        """True once a flow token of ours sends this request over a client's connection: route() goes over it.

        The token came from a Route of ours that loose_route() removed (a
        Record-Route of ours, or the Path of a phone registered here that
        another node routes to), or from use_flow_token() (Outbound mangling).
        """
        return self._flow is not None

    # --- headers --------------------------------------------------------------------

    def header(self, name: str) -> str | None:
        return self.message.header(name)

    def headers(self, name: str) -> list[str]:
        return self.message.headers(name)

    def set_header(self, name: str, value: str) -> None:
        self.message.set_header(name, value)

    def insert_header(self, name: str, value: str) -> None:
        self.message.insert_header(name, value)

    def delete_header(self, name: str) -> None:
        self.message.delete_header(name)

    # --- answering ---------------------------------------------------------------------

    def reply(self, status: int, reason: str | None = None,
              headers: list[tuple[str, str]] | dict[str, str] | None = None, body: bytes = b"") -> None:
        """Send a response; a second final one raises RuntimeError (after a CANCEL: ignored)."""
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 699:
            raise ValueError(f"a SIP status is an integer from 100 to 699, got {status!r}")
        if self.message.method == "ACK":
            raise RuntimeError("an ACK gets no response")
        if self._final_sent:
            if self._cancelled:
                return  # the transaction already ended with 487; the handler could not know
            raise RuntimeError(f"a final response was already sent to this {self.message.method}")
        if isinstance(headers, dict):
            headers = list(headers.items())
        self._core.send_reply(self, status, reason, headers, body)

    def check_max_forwards(self, limit: int) -> bool:
        """Add Max-Forwards: 70 when missing, lower a value above `limit`; 483 and False at 0."""
        value = self.message.max_forwards
        if value is None:
            value = DEFAULT_MAX_FORWARDS
            self.message.set_header("Max-Forwards", str(value))
        if value == 0:
            if not self._final_sent and self.message.method != "ACK":
                self.reply(483)
            return False
        if value > limit:
            self.message.set_header("Max-Forwards", str(limit))
        return True

    def destination_myself(self) -> bool:
        """The Request-URI names us: one of our addresses or domains, on our port (or none)."""
        uri = self.message.ruri
        host = uri.host
        if host is None:
            return False
        return self._core.is_local(_normal_host(host), uri.port)

    def loose_route(self) -> bool:
        """RFC 3261 §16.4: remove the top Route values that point to us; True when one did.

        Two in a row are ours when we record-routed twice (a request that
        changed transport here, RFC 5658): both go.  A removed Route that
        carries the flow token of a client's connection sends the request
        there (SIP.md §10), unless it came in over that very connection:
        then it is on its way from that client (RFC 5626 §5.3).
        """
        removed = False
        while (uri := self._top_route_if_ours()) is not None:
            self.message.pop_header_value("Route")
            removed = True
            self.use_flow_token(uri.user)
        return removed

    def use_flow_token(self, token: str | None) -> bool:
        """Route this request over the client's connection that `token` (a flow token of ours) names.

        False, and nothing changes, when it names none, or names the very
        connection the request came in over (it is on its way from that client).
        """
        flow = flows.decode(token)
        if flow is None or flow[:2] == self.source.flow:
            return False
        self._flow = flow
        return True

    def _top_route_if_ours(self) -> "SipUri | None":
        routes = self.message.headers("route")
        if not routes:
            return None
        try:
            uri = parse_name_addr(routes[0]).uri
        except Exception:
            return None
        if uri.host is not None and self._core.is_local(_normal_host(uri.host), uri.port):
            return uri
        return None

    def incoming_outbound_requested(self) -> bool:
        """RFC 5626: the client (first hop, reachable only over this flow) asks for Outbound.

        A REGISTER or dialog-forming request, with one Via (no proxy before
        us), `Supported: outbound`, one Contact with `;ob`, over a connection
        or with `rport` (a UDP client that keeps its NAT binding open).
        """
        message = self.message
        if message.method not in OUTBOUND_METHODS or message.to.tag is not None:
            return False
        if self.source.transport == "udp" and message.top_via.rport is None:
            return False
        if not any(tag.lower() == "outbound" for tag in message.headers("supported")):
            return False
        contacts = message.headers("contact")
        try:
            return len(contacts) == 1 and len(message.via) == 1 and "ob" in parse_name_addr(contacts[0]).uri.params
        except ParseError:
            return False

    def fix_nat(self) -> None:
        """RFC 3581: `received` and `rport` on the top Via, so responses go where the request came from."""
        self._core.stamp_via(self, force_rport=True)

    def __repr__(self) -> str:
        return f"<Request {self.message.method} {self.message.ruri} from {self.address[0]}:{self.address[1]}>"


def _normal_host(host: str) -> str:
    if ":" in host:
        try:
            return str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            return host.lower()
    return host.lower()
