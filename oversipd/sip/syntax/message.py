"""SIP requests and responses: parsed from bytes, edited, written back to bytes.

Sans-I/O: no sockets, no clock. Header lines are kept in order, each with the
text it arrived with, so that a line nobody edited is written back byte for
byte. Text is bytes decoded as UTF-8 with ``surrogateescape``: any byte
survives the round trip.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Union

from .errors import ParseError
from .uri import NameAddr, SipUri, Via, check_via, parse_name_addr, parse_uri, parse_via

__all__ = ["Message", "Request", "Response", "parse_message", "reason_phrase",
           "canonical_name"]

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

# RFC 3261 §7.3.3 compact forms and a few from extensions (RFC 3515, 3841, 3892, 4028, 6665).
_COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
    "c": "content-type", "e": "content-encoding", "k": "supported", "s": "subject",
    "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by", "x": "session-expires",
    "y": "identity", "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
    "n": "identity-info",
}

# Headers whose values are comma-separated lists (RFC 3261 §7.3.1 and extensions);
# headers not listed here (Subject, Date, WWW-Authenticate, unknown ones...) are
# returned whole, as their grammar may contain commas.
_LIST_HEADERS = frozenset((
    "via", "route", "record-route", "contact", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "content-encoding", "content-language", "alert-info", "call-info", "error-info",
    "in-reply-to", "warning", "path", "service-route", "allow-events", "reason",
    "security-client", "security-server", "security-verify", "p-asserted-identity",
    "p-preferred-identity", "privacy", "accept-contact", "reject-contact",
    "request-disposition", "history-info", "p-associated-uri", "accept-resource-priority",
    "resource-priority",
))

_REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 430: "Flow Failed",
    433: "Anonymity Disallowed", 436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}
_CLASS_REASONS = {1: "Trying", 2: "OK", 3: "Multiple Choices", 4: "Bad Request",
                  5: "Server Internal Error", 6: "Busy Everywhere"}


def reason_phrase(status: int) -> str:
    """RFC 3261 §21's reason phrase (or its class's for an unlisted code)."""
    return _REASONS.get(status) or _CLASS_REASONS.get(status // 100, "Unknown")


def canonical_name(name: str) -> str:
    """The lower-case long form of a header name ("v" and "VIA" → "via")."""
    key = name.strip().lower()
    return _COMPACT.get(key, key)


_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+\Z")
_LOOSE_REQUEST_LINE_RE = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]+) +(.*?) +(SIP/[0-9]+\.[0-9]+) *\Z")
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?\Z", re.S)
_CSEQ_RE = re.compile(r"([0-9]{1,30})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)\Z")
_CALL_ID_RE = re.compile(r"[!-~\x80-\U0010ffff]+\Z")
_FOLD_RE = re.compile(r"\r\n[ \t]+")
_MAX_CSEQ = 2 ** 31 - 1


def _split_commas(value: str) -> list[str]:
    """Split a header value on the commas outside quoted strings and <>."""
    if '"' not in value and "<" not in value:
        return [part.strip() for part in value.split(",")]
    parts = []
    start = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == '"':
            i += 1
            while i < n and value[i] != '"':
                i += 2 if value[i] == "\\" else 1
        elif ch == "<":
            end = value.find(">", i)
            i = n if end < 0 else end
        elif ch == ",":
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return parts


# Header names as usually written, mapped to their key without lower() per line.
_KNOWN_NAMES = {spelling: canonical_name(spelling) for spelling in (
    "Via", "From", "To", "Call-ID", "Call-Id", "CSeq", "Max-Forwards", "Content-Length",
    "Contact", "Content-Type", "Record-Route", "Route", "Allow", "Supported", "Require",
    "Proxy-Require", "Unsupported", "User-Agent", "Server", "Expires", "Min-Expires",
    "Session-Expires", "Min-SE", "Accept", "Accept-Encoding", "Accept-Language", "Subject",
    "Date", "Timestamp", "Organization", "Priority", "Reason", "Warning", "Retry-After",
    "Authorization", "Proxy-Authorization", "WWW-Authenticate", "Proxy-Authenticate",
    "Authentication-Info", "Event", "Allow-Events", "Subscription-State", "Refer-To",
    "Referred-By", "Path", "Service-Route", "Privacy", "P-Asserted-Identity",
    "P-Preferred-Identity", "Content-Disposition", "Content-Encoding", "Content-Language",
    "MIME-Version", "RSeq", "RAck", "Alert-Info", "Call-Info", "Error-Info", "In-Reply-To",
    "Reply-To", "Identity", "Diversion", "Remote-Party-ID", "P-Charging-Vector",
    *_COMPACT)}



def _key_of(name: str) -> str:
    """canonical_name(name), looked up for the usual spellings."""
    return _KNOWN_NAMES.get(name) or canonical_name(name)


_UNSET = object()
# The headers parse_message checks (SIP_MESSAGE_API.md: they matter for routing).
_CHECKED = frozenset(("via", "from", "to", "call-id", "cseq", "max-forwards", "content-length"))
# The cached typed value of each header that has one, reset when the header is edited.
_CACHE_SLOT = {"via": "_via", "from": "_from", "to": "_to", "call-id": "_call_id",
               "cseq": "_cseq_pair", "max-forwards": "_max_forwards",
               "content-length": "_content_length"}


def _value_of(line: str) -> str:
    """The value of a header line: after the first colon, unfolded, LWS stripped."""
    value = line[line.index(":") + 1:]
    if "\r\n" in value:
        value = _FOLD_RE.sub(" ", value)
    return value.strip(" \t")


def _make_line(name: str, value: object) -> str:
    value = str(value).strip(" \t")
    if "\r" in value or "\n" in value or ":" in name or "\r" in name or "\n" in name:
        raise ValueError(f"no CR or LF in a header, no ':' in its name: {name!r}: {value!r}")
    return f"{name}: {value}"


def _keys_of(lines: list[str], found: dict[str, list[str]] | None = None) -> list[str]:
    """The key (canonical lower-case name) of each header line.

    With `found`, also the values of the headers parse_message checks, by key
    (not unfolded: the caller unfolds when the message had folded lines).
    """
    keys = []
    append = keys.append
    known = _KNOWN_NAMES
    checked = _CHECKED if found is not None else ()
    for line in lines:
        name, colon, value = line.partition(":")
        key = known.get(name)
        if key is None or not colon:
            key = name.rstrip(" \t").lower()
            if not colon or not key:
                raise ParseError("Bad header line")
            key = _COMPACT.get(key, key)
        append(key)
        if key in checked:
            value = value.strip(" \t")
            if key in found:  # type: ignore[operator]
                found[key].append(value)  # type: ignore[index]
            else:
                found[key] = [value]  # type: ignore[index]
    return keys


# --- typed values of the headers a response needs, from their values ---------------------
def _one(values: list[str] | None, what: str) -> str:
    if values is None or len(values) != 1:
        raise ParseError(f"{'Missing' if not values else 'Multiple'} {what}")
    return values[0]


def _via_texts_of(values: list[str] | None) -> list[str]:
    """Each Via value (lines split at their commas), all checked, the top one first."""
    if not values:
        raise ParseError("Missing Via")
    texts = []
    for value in values:
        if "," in value:
            texts += _split_commas(value)
        else:
            texts.append(value)
    for text in texts[1:]:
        check_via(text)
    return texts


def _vias_of(values: list[str]) -> list[Via]:
    if not values:
        raise ParseError("Missing Via")
    vias = []
    for value in values:
        if "," in value:
            vias += [parse_via(part) for part in _split_commas(value)]
        else:
            vias.append(parse_via(value))
    return vias


def _address_of(values: list[str] | None, what: str) -> NameAddr:
    try:
        return parse_name_addr(_one(values, what))
    except ParseError as exc:
        raise ParseError(exc.reason if exc.reason.endswith(what) else f"Bad {what}") from None


def _call_id_of(values: list[str] | None) -> str:
    value = _one(values, "Call-ID")
    if _CALL_ID_RE.match(value) is None:
        raise ParseError("Bad Call-ID")
    return value


def _cseq_of(values: list[str] | None) -> tuple[int, str]:
    """(number, method) of a well-formed CSeq; the caller checks the number's range."""
    value = _one(values, "CSeq")
    number, _, method = value.partition(" ")
    if not (number.isascii() and number.isdigit() and len(number) < 11
            and method.isascii() and method.isalpha()):
        m = _CSEQ_RE.match(value)
        if m is None:
            raise ParseError("Bad CSeq")
        number, method = m.groups()
    return int(number), method


def _max_forwards_of(values: list[str] | None) -> int | None:
    if not values:
        return None
    text = values[0]
    if len(values) > 1 or not (text.isascii() and text.isdigit() and len(text) < 11) \
            or int(text) > 255:
        raise ParseError("Bad Max-Forwards")
    return int(text)


def _content_length_of(values: list[str]) -> int:
    text = values[0]
    if len(values) > 1 or not (text.isascii() and text.isdigit() and len(text) < 11):
        raise ParseError("Bad Content-Length")
    return int(text)


class Message:
    """What requests and responses share: the header block and the body.

    Header lines are kept as two parallel lists: `_keys` (canonical names) and
    `_lines` (the text of each line as it came, folding included, or as an edit
    wrote it). A value is read from its line when asked for.
    """

    # __dict__: the transport layer may hang its own attributes on a message.
    __slots__ = ("_keys", "_lines", "_body", "_raw", "_via", "_top_via", "_via_texts", "_from",
                 "_to", "_call_id", "_cseq_pair", "_max_forwards", "_content_length", "__dict__")

    def _init_headers(self, headers: list[tuple[str, str]] | None, body: bytes) -> None:
        headers = headers or ()
        self._keys = [_key_of(name) for name, _ in headers]
        self._lines = [_make_line(name, value) for name, value in headers]
        self._body = bytes(body)
        self._raw = None
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._via = self._top_via = self._via_texts = None
        self._from = self._to = self._call_id = self._cseq_pair = None
        self._max_forwards = self._content_length = _UNSET

    # --- header access -----------------------------------------------------------
    def _indices(self, key: str) -> list[int]:
        keys = self._keys
        count = keys.count(key)
        if count == 1:
            return [keys.index(key)]
        found = []
        i = -1
        for _ in range(count):
            i = keys.index(key, i + 1)
            found.append(i)
        return found

    def _values(self, key: str) -> list[str]:
        """The values of every line of a header, lists not split."""
        lines = self._lines
        return [_value_of(lines[i]) for i in self._indices(key)]

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        key = _key_of(name)
        keys = self._keys
        if key not in keys:
            return None
        value = _value_of(self._lines[keys.index(key)])
        if key in _LIST_HEADERS and "," in value:
            return _split_commas(value)[0]
        return value

    def headers(self, name: str) -> list[str]:
        """All values of a header, comma-separated lists split."""
        key = _key_of(name)
        values = self._values(key)
        if key not in _LIST_HEADERS:
            return values
        split = []
        for value in values:
            if "," in value:
                split += _split_commas(value)
            else:
                split.append(value)
        return split

    def header_names(self) -> list[str]:
        """The canonical (lower-case long) names of the header lines, in order."""
        return list(self._keys)

    # --- header edits --------------------------------------------------------------
    def _edited(self, key: str) -> None:
        self._raw = None
        slot = _CACHE_SLOT.get(key)
        if key == "via":
            self._top_via = self._via_texts = None
        if slot is not None:
            setattr(self, slot, _UNSET if slot in ("_max_forwards", "_content_length") else None)

    def set_header(self, name: str, value: object) -> None:
        """Replace all lines of a header by one, at the first one's place (or append)."""
        key = _key_of(name)
        line = _make_line(name, value)
        keys, lines = self._keys, self._lines
        if key in keys:
            first = keys.index(key)
            lines[first] = line
            if keys.count(key) > 1:
                kept = [i for i in range(len(keys)) if keys[i] != key or i == first]
                self._keys = [keys[i] for i in kept]
                self._lines = [lines[i] for i in kept]
        else:
            keys.append(key)
            lines.append(line)
        self._edited(key)

    def insert_header(self, name: str, value: object) -> None:
        """A new header line on top of the header block."""
        key = _key_of(name)
        self._lines.insert(0, _make_line(name, value))
        self._keys.insert(0, key)
        self._edited(key)

    def append_header(self, name: str, value: object) -> None:
        """A new header line at the end of the header block."""
        key = _key_of(name)
        self._lines.append(_make_line(name, value))
        self._keys.append(key)
        self._edited(key)

    def delete_header(self, name: str) -> None:
        """Remove every line of a header."""
        key = _key_of(name)
        keys, lines = self._keys, self._lines
        if key in keys:
            kept = [i for i in range(len(keys)) if keys[i] != key]
            self._keys = [keys[i] for i in kept]
            self._lines = [lines[i] for i in kept]
            self._edited(key)

    def pop_header_value(self, name: str) -> str | None:
        """Remove the first value of a header (the top Via, Route), keep the others."""
        key = _key_of(name)
        keys, lines = self._keys, self._lines
        if key not in keys:
            return None
        i = keys.index(key)
        line = lines[i]
        value = _value_of(line)
        if key in _LIST_HEADERS and "," in value:
            values = _split_commas(value)
            if len(values) > 1:
                lines[i] = _make_line(line[:line.index(":")].rstrip(" \t"), ", ".join(values[1:]))
                self._edited(key)
                return values[0]
        del keys[i], lines[i]
        self._edited(key)
        return value

    # --- body --------------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = bytes(value)
        self._raw = None
        if "content-length" in self._keys:
            self.set_header("Content-Length", len(self._body))

    # --- typed, cached header values -----------------------------------------------
    @property
    def via(self) -> list[Via]:
        """The Via values, top first."""
        vias = self._via
        if vias is None:
            texts = self._via_texts
            if texts is None:
                vias = _vias_of(self._values("via"))
            else:  # parse_message checked them all and parsed the top one
                vias = [self._top_via] + [parse_via(text) for text in texts[1:]]
            self._via = vias
        return vias

    @property
    def top_via(self) -> Via:
        """The top Via (`via[0]`), without making objects of the others."""
        top = self._top_via
        if top is None:
            self._top_via = top = self.via[0]
        return top

    @property
    def from_(self) -> NameAddr:
        value = self._from
        if value is None:
            self._from = value = _address_of(self._values("from"), "From")
        return value

    @property
    def to(self) -> NameAddr:
        value = self._to
        if value is None:
            self._to = value = _address_of(self._values("to"), "To")
        return value

    @property
    def call_id(self) -> str:
        value = self._call_id
        if value is None:
            self._call_id = value = _call_id_of(self._values("call-id"))
        return value

    def _cseq(self) -> tuple[int, str]:
        pair = self._cseq_pair
        if pair is None:
            pair = _cseq_of(self._values("cseq"))
            if pair[0] > _MAX_CSEQ:
                raise ParseError("Bad CSeq")  # RFC 3261 §8.1.1.5: less than 2**31
            self._cseq_pair = pair
        return pair

    @property
    def cseq(self) -> int:
        pair = self._cseq_pair
        return (pair or self._cseq())[0]

    @property
    def cseq_method(self) -> str:
        pair = self._cseq_pair
        return (pair or self._cseq())[1]

    @property
    def max_forwards(self) -> int | None:
        value = self._max_forwards
        if value is _UNSET:
            self._max_forwards = value = _max_forwards_of(self._values("max-forwards"))
        return value  # type: ignore[return-value]

    @property
    def content_length(self) -> int:
        """The Content-Length header's value, or the body's length without one."""
        value = self._content_length
        if value is _UNSET:
            values = self._values("content-length")
            if not values:
                return len(self._body)
            self._content_length = value = _content_length_of(values)
        return value  # type: ignore[return-value]

    # --- serialisation -------------------------------------------------------------------
    def _start_line(self) -> str:
        raise NotImplementedError

    def _unedited(self) -> bool:
        return self._raw is not None

    def to_bytes(self) -> bytes:
        """The message as SIP; unedited header lines keep their original bytes."""
        if self._unedited():
            return self._raw  # type: ignore[return-value]
        body = self._body
        length = str(len(body))
        keys = self._keys
        if keys.count("content-length") != 1 or \
                _value_of(self._lines[keys.index("content-length")]) != length:
            self.set_header("Content-Length", length)
        head = "\r\n".join([self._start_line(), *self._lines, "", ""])
        return head.encode(_ENCODING, _ERRORS) + body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def copy(self) -> "Message":
        """An independent copy (edits to one do not touch the other), without writing and parsing it."""
        twin = type(self).__new__(type(self))
        self._copy_start_line(twin)
        twin._keys = list(self._keys)
        twin._lines = list(self._lines)
        twin._body = self._body
        twin._raw = self._raw
        # Via, From and To objects are mutable: the copy reads its own from its lines if asked
        # (a forwarded copy mostly is not; fewer objects also mean less for the cycle collector).
        twin._via = twin._top_via = twin._via_texts = twin._from = twin._to = None
        twin._call_id, twin._cseq_pair = self._call_id, self._cseq_pair
        twin._max_forwards, twin._content_length = self._max_forwards, self._content_length
        return twin

    def _copy_start_line(self, twin: "Message") -> None:
        raise NotImplementedError

    def _eq_key(self) -> tuple:
        return ([(k, _value_of(line)) for k, line in zip(self._keys, self._lines)
                 if k != "content-length"], self._body)


class Request(Message):
    """A SIP request."""

    __slots__ = ("method", "_ruri", "_ruri_text", "version")

    def __init__(self, method: str, ruri: SipUri | str,
                 headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                 version: str = "SIP/2.0") -> None:
        self.method = method
        self._ruri = parse_uri(ruri) if isinstance(ruri, str) else ruri
        self._ruri_text = None
        self.version = version
        self._init_headers(headers, body)

    @property
    def ruri(self) -> SipUri:
        """The Request-URI (None only in a request refused because it did not parse)."""
        return self._ruri  # type: ignore[return-value]

    @ruri.setter
    def ruri(self, value: SipUri | str) -> None:
        self._ruri = parse_uri(value) if isinstance(value, str) else value
        self._raw = None

    def _start_line(self) -> str:
        ruri = self._ruri_text if self._ruri is None else str(self._ruri)
        return f"{self.method} {ruri} {self.version}"

    def _copy_start_line(self, twin: Message) -> None:
        twin.method, twin.version, twin._ruri_text = self.method, self.version, self._ruri_text  # type: ignore[attr-defined]
        twin._ruri = None if self._ruri is None else self._ruri.copy()  # type: ignore[attr-defined]

    def _unedited(self) -> bool:
        return self._raw is not None and (self._ruri is None or self._ruri._unedited())

    def make_response(self, status: int, reason: str | None = None, to_tag: str | None = None,
                      headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> Response:
        """A response to this request (RFC 3261 §8.2.6): Via, From, To, Call-ID, CSeq copied."""
        copied = _COPIED_WITH_RECORD_ROUTE if 100 < status < 300 else _COPIED
        response = Response(status, reason, headers, body)
        keys, lines = [], []
        for key, line in zip(self._keys, self._lines):
            if key in copied:
                if key == "to" and to_tag is not None and self.to.tag is None:
                    name = line[:line.index(":")].rstrip(" \t")
                    line = _make_line(name, f"{_value_of(line)};tag={to_tag}")
                keys.append(key)
                lines.append(line)
        response._keys[:0] = keys
        response._lines[:0] = lines
        if "content-length" not in response._keys:
            response.append_header("Content-Length", len(response._body))
        return response

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.method, self.ruri, self.version, *self._eq_key()) == (
            other.method, other.ruri, other.version, *other._eq_key())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._start_line().split(' ')[1]}>"


_COPIED = frozenset(("via", "from", "to", "call-id", "cseq"))
_COPIED_WITH_RECORD_ROUTE = _COPIED | {"record-route"}


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason", "version")

    def __init__(self, status: int, reason: str | None = None,
                 headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                 version: str = "SIP/2.0") -> None:
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason
        self.version = version
        self._init_headers(headers, body)

    # OverSIP's names (SIP.md §10): an OverSIP script's `response.status_code` ports as it is.
    @property
    def status_code(self) -> int:
        return self.status

    @status_code.setter
    def status_code(self, value: int) -> None:
        self.status = value
        self._raw = None

    @property
    def reason_phrase(self) -> str:
        return self.reason

    @reason_phrase.setter
    def reason_phrase(self, value: str) -> None:
        if "\r" in value or "\n" in value:
            raise ValueError(f"no CR or LF in a reason phrase: {value!r}")
        self.reason = value
        self._raw = None

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _copy_start_line(self, twin: Message) -> None:
        twin.status, twin.reason, twin.version = self.status, self.reason, self.version  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.reason, *self._eq_key()) == (
            other.status, other.reason, *other._eq_key())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# --- parsing ------------------------------------------------------------------------------
def _merge_folded(lines: list[str]) -> list[str]:
    """Join continuation lines (starting with SP or HTAB) to the line above them."""
    merged: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and merged:
            merged[-1] += "\r\n" + line
        else:
            merged.append(line)
    return merged


def _start(first: str) -> tuple[Request | Response, str | None, str | None]:
    """The message its start line begins: (message, Request-URI text, request-line error)."""
    if first.startswith("SIP/"):
        m = _STATUS_RE.match(first)
        if m is None:
            raise ParseError("Bad status line")
        response = Response.__new__(Response)
        response.status = int(m.group(1))
        response.reason = m.group(2) or ""
        response.version = "SIP/2.0"
        return response, None, None
    line_error = None
    parts = first.split(" ")
    if len(parts) == 3 and ((parts[0].isalpha() and parts[0].isascii())
                            or _TOKEN_RE.match(parts[0]) is not None):
        method, ruri_text, version = parts
    else:
        # Extra spaces: still a request a 400 can answer, once its headers parsed.
        m = _LOOSE_REQUEST_LINE_RE.match(first)
        if m is None:
            raise ParseError("Bad request line")
        method, ruri_text, version = m.groups()
        line_error = "Bad Request-URI" if " " in ruri_text else "Bad Request-Line"
    request = Request.__new__(Request)
    request.method = method
    request.version = version
    request._ruri = None
    request._ruri_text = ruri_text
    return request, ruri_text, line_error


def _check_request(request: Request, ruri_text: str, line_error: str | None) -> None:
    """What makes a request with parseable dialog headers still deserve a 400 (or 505, 416).

    The Request-URI is parsed first, so that `ruri` is set whenever it parses.
    """
    try:
        request._ruri = ruri = parse_uri(ruri_text)
    except ParseError:
        ruri = None
    if line_error is not None:
        raise ParseError(line_error)
    if request._cseq_pair[0] > _MAX_CSEQ:  # type: ignore[index]
        # A well-formed CSeq out of range: still copied as it is into a 400.
        raise ParseError("Bad CSeq")  # RFC 3261 §8.1.1.5: less than 2**31
    if request.version != "SIP/2.0":
        if _VERSION_RE.match(request.version):
            raise ParseError("Version Not Supported", status=505)
        raise ParseError("Bad SIP version")
    if request._cseq_pair[1] != request.method:  # type: ignore[index]
        raise ParseError("CSeq method does not match the request's")
    if ruri is None:
        raise ParseError("Bad Request-URI")
    if ruri.opaque is not None:
        raise ParseError("Unsupported URI Scheme", status=416)
    if ruri._htext:
        raise ParseError("Bad Request-URI")  # RFC 3261 §19.1.1: no headers here


def _scan_python(data: bytes, known: dict[str, str], compact: dict[str, str],
                 checked: frozenset[str]) -> tuple | str:
    """Cut the header block into lines and name them (what _speedups.scan does in C).

    Returns (start, end, start line, header lines, their keys, the values of the
    `checked` headers by key, whether lines were folded), or the reason it cannot.
    """
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2  # RFC 3261 §7.5: CRLFs before the start line are ignored
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return "No end of header block"
    head = data[start:end].decode(_ENCODING, _ERRORS)
    lines = head.split("\r\n")
    folded = "\r\n " in head or "\r\n\t" in head
    if folded:
        lines = _merge_folded(lines)
    first = lines[0]
    del lines[0]
    found: dict[str, list[str]] = {}
    try:
        keys = _keys_of(lines, found)
    except ParseError as exc:
        return exc.reason
    return start, end, first, lines, keys, found, folded


try:
    from ._speedups import scan as _scan
except ImportError:  # not built: the same in Python
    _scan = _scan_python
if os.environ.get("OVERSIPD_SIP_PURE_PYTHON"):
    _scan = _scan_python


def parse_message(data: bytes) -> Union[Request, Response]:
    """Parse one datagram (or one message framed off a stream) into a Request or Response."""
    return _parse(data, _scan)


def _parse(data: bytes, scan: Callable) -> Union[Request, Response]:
    if not isinstance(data, bytes):
        data = bytes(data)
    scanned = scan(data, _KNOWN_NAMES, _COMPACT, _CHECKED)
    if type(scanned) is str:
        raise ParseError(scanned)
    start, end, first, lines, keys, found, folded = scanned
    msg, ruri_text, line_error = _start(first)
    msg._keys = keys
    msg._lines = lines
    if folded:
        for values in found.values():
            values[:] = [_FOLD_RE.sub(" ", value).strip(" \t") for value in values]

    # Without these no response can be built: a ParseError here carries no request.
    get = found.get
    msg._via_texts = texts = _via_texts_of(get("via"))
    msg._top_via = parse_via(texts[0])
    msg._via = None
    msg._from = _address_of(get("from"), "From")
    msg._to = _address_of(get("to"), "To")
    msg._call_id = _call_id_of(get("call-id"))
    msg._cseq_pair = _cseq_of(get("cseq"))
    msg._max_forwards = msg._content_length = _UNSET
    request = msg if ruri_text is not None else None
    try:
        if request is not None:
            _check_request(request, ruri_text, line_error)  # type: ignore[arg-type]
            request._max_forwards = _max_forwards_of(get("max-forwards"))
        elif msg._cseq_pair[0] > _MAX_CSEQ:
            raise ParseError("Bad CSeq")
        lengths = get("content-length")
        length = None if lengths is None else _content_length_of(lengths)
        msg._content_length = _UNSET if length is None else length
    except ParseError as exc:
        exc.request = request  # type: ignore[assignment]
        raise
    body_start = end + 4
    if length is None:
        msg._body = data[body_start:]
        msg._raw = data[start:] if start else data
    else:
        stop = body_start + length
        if stop > len(data):
            raise ParseError("Bad Content-Length", request)  # type: ignore[arg-type]
        msg._body = data[body_start:stop]
        msg._raw = data[start:stop]
    return msg
