"""oversipd's SIP message layer (sans-I/O): parse, inspect, edit and write SIP messages."""

from .errors import FramingError, ParseError
from .framing import KEEPALIVE, StreamFramer
from .message import Message, Request, Response, canonical_name, parse_message, reason_phrase
from .uri import (NameAddr, SipUri, Via, parse_name_addr, parse_params, parse_uri, parse_via,
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
        from .proxy import Proxy
        return Proxy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
