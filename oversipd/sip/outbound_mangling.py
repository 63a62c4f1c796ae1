"""OverSIP's OutboundMangling module: Outbound (RFC 5626) through a registrar that knows nothing of it.

A registrar that ignores Path sends a request for a registered client
straight to the Contact it stored, which the client behind NAT cannot be
reached at.  So the REGISTER a client sends over its own connection,
with us as its first hop, leaves with that connection's flow token as a
`;ov-ob=` parameter of its Contact URI; the registrar stores it with the
binding, and a request to the binding comes back to us with the token in
its Request-URI, where `extract_outbound_from_ruri` takes it out and
routes over the flow.  (OverSIP does it for a client that asked for
Outbound, or for any first-hop client once the script called fix_nat,
as its default script does; every accepted connection is a flow here,
so the first-hop rule alone decides.)

    from oversipd.sip.outbound_mangling import add_outbound_to_contact, extract_outbound_from_ruri

    if request.sip_method == "REGISTER":
        add_outbound_to_contact(proxy)         # before proxy.route(request)
    elif extract_outbound_from_ruri(request):  # now routed over the client's connection
        ...
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .core.request import OUTBOUND_METHODS
from .proxy.engine import Proxy
from .syntax.errors import ParseError
from .syntax.uri import parse_name_addr

if TYPE_CHECKING:
    from .core.request import Request
    from .syntax.message import Request as Message, Response

PARAM = "ov-ob"
_PARAM_RE = re.compile(r";ov-ob=[-_0-9A-Za-z=]+", re.I)


class ContactMangling:
    """What add_outbound_to_contact() adds to a proxy: the token on the way down, taken off on the way up."""

    def outgoing(self, engine: Any, request: "Request", message: "Message") -> None:
        flow = getattr(request.source, "flow", None)   # (slot, flow id) of the client's connection; a UAC's: none
        if flow is None or not _first_hop(message):
            return
        try:
            contact = parse_name_addr(message.header("contact") or "")
        except ParseError:
            return   # "*" (un-REGISTER all), or nothing we could write back
        if PARAM in contact.uri.params:
            return
        contact.uri.params[PARAM] = engine.flows.token(flow)
        message.set_header("Contact", str(contact))

    def success(self, response: "Response") -> None:
        """The registrar's bindings as the client registered them (RFC 5626 §6: it finds its own Contact)."""
        contacts = response.headers("contact")
        if any(PARAM in value.lower() for value in contacts):
            response.set_header("Contact", ", ".join(_PARAM_RE.sub("", value) for value in contacts))


_MANGLING = ContactMangling()


def _first_hop(message: "Message") -> bool:
    """A REGISTER or dialog-forming request straight from its client (one Via), with one Contact."""
    return (message.method in OUTBOUND_METHODS and message.to.tag is None
            and len(message.headers("via")) == 1 and len(message.headers("contact")) == 1)


def add_outbound_to_contact(proxy: Proxy) -> None:
    """Have `proxy` put the client's flow token into the Contact of what it routes (once per proxy)."""
    if not isinstance(proxy, Proxy):
        raise TypeError(f"add_outbound_to_contact() needs an oversipd.sip.Proxy, got {proxy!r}")
    if _MANGLING not in proxy.manglers:
        proxy.manglers.append(_MANGLING)


def extract_outbound_from_ruri(request: "Request") -> bool:
    """Take `;ov-ob=` out of the Request-URI; True when its token now routes the request over a flow.

    False when there was none, when it names no live token of ours, or when
    a Route with our flow token already decided (a registrar that kept Path).
    """
    token = request.ruri.params.pop(PARAM, None)
    if token is None or request.to_flow:
        return False
    return request.use_flow_token(token)
