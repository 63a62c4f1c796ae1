"""oversipd's SIP stack, in RFC 3261's layers, each a folder that imports only the ones below it.

    syntax/       messages, URIs, framing (sans-I/O)
    transaction/  server and client transactions, their timers (sans-I/O)
    transport/    UDP/TCP listeners, per-slot sockets, flows, the relay between workers
    core/         receive -> transaction -> SipEvents.on_request; the Request
    proxy/        Proxy(profile).route(): forwarding, DNS (RFC 3263); Uac: requests of our own
    outbound_mangling.py, user_assertion.py
                  OverSIP's core modules as helpers for server scripts (above the proxy)
    service.py    SIP set-up in the master and in a worker (above every layer)

Beside the layers: `settings` and `proxy_settings` (the [sip], [proxy.*] and
[dns] tables, read by oversipd.settings), `counters` (for `oversipd status`).

This package's names are the public ones of SIP.md: the message layer's
(`SipUri`, `parse_message`, ...) and `Proxy`, `Uac`, `UacRequest`, loaded on first use.
"""

from .syntax.errors import FramingError, ParseError
from .syntax.framing import KEEPALIVE, StreamFramer
from .syntax.message import Message, Request, Response, canonical_name, parse_message, reason_phrase
from .syntax.uri import (NameAddr, SipUri, Via, parse_name_addr, parse_params, parse_uri, parse_via,
                  quote_display_name, unescape)

__all__ = [
    "FramingError", "ParseError", "KEEPALIVE", "StreamFramer", "Message", "Request", "Response",
    "canonical_name", "parse_message", "reason_phrase", "NameAddr", "SipUri", "Via",
    "parse_name_addr", "parse_params", "parse_uri", "parse_via", "quote_display_name", "unescape",
]


def __getattr__(name: str):
    # `from oversipd.sip import Proxy` (SIP.md §10) without loading the proxy,
    # its resolver and dnspython for a user of the message layer alone.
    if name == "Proxy":
        from .proxy.engine import Proxy
        return Proxy
    if name in ("Uac", "UacRequest"):
        from .proxy import uac
        return getattr(uac, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
