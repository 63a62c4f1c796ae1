"""SIP requests and responses: parsed from bytes, edited, written back to bytes.

Sans-I/O: no sockets, no clock. Header lines are kept in order, each with the
text it arrived with, so that a line nobody edited is written back byte for
byte. Text is bytes decoded as UTF-8 with ``surrogateescape``: any byte
survives the round trip.
"""

from __future__ import annotations

import re
from typing import Union

from .errors import ParseError
from .uri import NameAddr, SipUri, Via, parse_name_addr, parse_uri, parse_via

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
_LONG_TO_COMPACT = {long: short for short, long in _COMPACT.items()}

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
_DIGITS_RE = re.compile(r"[0-9]{1,10}\Z")
_CALL_ID_RE = re.compile(r"[!-~\x80-\U0010ffff]+\Z")
_NAME_RE = re.compile(r"[!-9;-~]+")
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


_ABSENT = object()


class Message:
    """What requests and responses share: the header block and the body."""

    # __dict__: the transport layer may hang its own attributes on a message.
    __slots__ = ("_fields", "_body", "_orig_body", "_raw", "_cache", "__dict__")

    # Each field is a list [key, name, value, raw]: canonical name, the name as
    # written, the unfolded stripped value, the original line text (None once edited).

    def _init_fields(self, headers: list[tuple[str, str]] | None, body: bytes) -> None:
        self._fields = [[canonical_name(n), n, v.strip(), None] for n, v in (headers or ())]
        self._body = body
        self._orig_body = None
        self._raw = None
        self._cache = {}

    # --- header access -----------------------------------------------------------
    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        key = name.lower()
        key = _COMPACT.get(key, key)
        for field in self._fields:
            if field[0] == key:
                value = field[2]
                if key in _LIST_HEADERS and "," in value:
                    return _split_commas(value)[0]
                return value
        return None

    def headers(self, name: str) -> list[str]:
        """All values of a header, comma-separated lists split."""
        key = name.lower()
        key = _COMPACT.get(key, key)
        split = key in _LIST_HEADERS
        values = []
        for field in self._fields:
            if field[0] == key:
                value = field[2]
                if split and "," in value:
                    values += _split_commas(value)
                else:
                    values.append(value)
        return values

    def header_names(self) -> list[str]:
        """The canonical (lower-case long) names of the header lines, in order."""
        return [field[0] for field in self._fields]

    # --- header edits --------------------------------------------------------------
    def _edited(self, key: str) -> None:
        self._raw = None
        self._cache.pop(key, None)

    def set_header(self, name: str, value: str) -> None:
        """Replace all lines of a header by one, at the first one's place (or append)."""
        key = canonical_name(name)
        fields = self._fields
        new = [key, name, str(value).strip(), None]
        for i, field in enumerate(fields):
            if field[0] == key:
                fields[i] = new
                self._fields = fields[:i + 1] + [f for f in fields[i + 1:] if f[0] != key]
                break
        else:
            fields.append(new)
        self._edited(key)

    def insert_header(self, name: str, value: str) -> None:
        """A new header line on top of the header block."""
        key = canonical_name(name)
        self._fields.insert(0, [key, name, str(value).strip(), None])
        self._edited(key)

    def append_header(self, name: str, value: str) -> None:
        """A new header line at the end of the header block."""
        key = canonical_name(name)
        self._fields.append([key, name, str(value).strip(), None])
        self._edited(key)

    def delete_header(self, name: str) -> None:
        """Remove every line of a header."""
        key = canonical_name(name)
        self._fields = [f for f in self._fields if f[0] != key]
        self._edited(key)

    def pop_header_value(self, name: str) -> str | None:
        """Remove the first value of a header (the top Via, Route), keep the others."""
        key = canonical_name(name)
        fields = self._fields
        for i, field in enumerate(fields):
            if field[0] == key:
                values = _split_commas(field[2]) if key in _LIST_HEADERS else [field[2]]
                if len(values) > 1:
                    fields[i] = [key, field[1], ", ".join(values[1:]), None]
                else:
                    del fields[i]
                self._edited(key)
                return values[0]
        return None

    # --- body --------------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = bytes(value)
        self._raw = None

    # --- typed, cached header values -----------------------------------------------
    def _single(self, key: str, what: str) -> str:
        values = [f[2] for f in self._fields if f[0] == key]
        if len(values) != 1:
            raise ParseError(f"{'Missing' if not values else 'Multiple'} {what}")
        return values[0]

    @property
    def via(self) -> list[Via]:
        try:
            return self._cache["via"]
        except KeyError:
            values = self.headers("via")
            if not values:
                raise ParseError("Missing Via") from None
            vias = [parse_via(v) for v in values]
            self._cache["via"] = vias
            return vias

    @property
    def from_(self) -> NameAddr:
        try:
            return self._cache["from"]
        except KeyError:
            value = self._single("from", "From")
            try:
                na = parse_name_addr(value)
            except ParseError:
                raise ParseError("Bad From") from None
            self._cache["from"] = na
            return na

    @property
    def to(self) -> NameAddr:
        try:
            return self._cache["to"]
        except KeyError:
            value = self._single("to", "To")
            try:
                na = parse_name_addr(value)
            except ParseError:
                raise ParseError("Bad To") from None
            self._cache["to"] = na
            return na

    @property
    def call_id(self) -> str:
        try:
            return self._cache["call-id"]
        except KeyError:
            value = self._single("call-id", "Call-ID")
            if _CALL_ID_RE.match(value) is None:
                raise ParseError("Bad Call-ID") from None
            self._cache["call-id"] = value
            return value

    def _cseq(self) -> tuple[int, str]:
        try:
            return self._cache["cseq"]
        except KeyError:
            m = _CSEQ_RE.match(self._single("cseq", "CSeq"))
            if m is None:
                raise ParseError("Bad CSeq") from None
            cseq = (int(m.group(1)), m.group(2))
            self._cache["cseq"] = cseq
            if cseq[0] > _MAX_CSEQ:
                raise ParseError("Bad CSeq")  # RFC 3261 §8.1.1.5: less than 2**31
            return cseq

    @property
    def cseq(self) -> int:
        return self._cseq()[0]

    @property
    def cseq_method(self) -> str:
        return self._cseq()[1]

    @property
    def max_forwards(self) -> int | None:
        value = self._cache.get("max-forwards", _ABSENT)
        if value is _ABSENT:
            values = [f[2] for f in self._fields if f[0] == "max-forwards"]
            if not values:
                value = None
            elif len(values) > 1 or _DIGITS_RE.match(values[0]) is None or int(values[0]) > 255:
                raise ParseError("Bad Max-Forwards")
            else:
                value = int(values[0])
            self._cache["max-forwards"] = value
        return value  # type: ignore[return-value]

    @property
    def content_length(self) -> int:
        """The Content-Length header's value, or the body's length without one."""
        value = self._cache.get("content-length")
        if value is None:
            values = [f[2] for f in self._fields if f[0] == "content-length"]
            if not values:
                return len(self._body)
            if len(values) > 1 or _DIGITS_RE.match(values[0]) is None:
                raise ParseError("Bad Content-Length")
            value = int(values[0])
            self._cache["content-length"] = value
        return value

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
        lengths = [f[2] for f in self._fields if f[0] == "content-length"]
        if lengths != [str(len(body))]:
            self.set_header("Content-Length", str(len(body)))
        lines = [self._start_line()]
        lines += [f[3] if f[3] is not None else f"{f[1]}: {f[2]}" for f in self._fields]
        lines.append("\r\n")
        return "\r\n".join(lines).encode(_ENCODING, _ERRORS) + body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def _eq_key(self) -> tuple:
        return ([(f[0], f[2]) for f in self._fields if f[0] != "content-length"], self._body)


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
        self._init_fields(headers, bytes(body))

    @property
    def ruri(self) -> SipUri:
        return self._ruri  # type: ignore[return-value]

    @ruri.setter
    def ruri(self, value: SipUri | str) -> None:
        self._ruri = parse_uri(value) if isinstance(value, str) else value
        self._raw = None

    def _start_line(self) -> str:
        ruri = self._ruri_text if self._ruri is None else str(self._ruri)
        return f"{self.method} {ruri} {self.version}"

    def _unedited(self) -> bool:
        return self._raw is not None and (self._ruri is None or self._ruri._unedited())

    def make_response(self, status: int, reason: str | None = None, to_tag: str | None = None,
                      headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> Response:
        """A response to this request (RFC 3261 §8.2.6): Via, From, To, Call-ID, CSeq copied."""
        copied = ("via", "from", "to", "call-id", "cseq")
        if 100 < status < 300:
            copied += ("record-route",)
        response = Response(status, reason)
        fields = []
        for field in self._fields:
            if field[0] in copied:
                if field[0] == "to" and to_tag is not None and self.to.tag is None:
                    fields.append([field[0], field[1], f"{field[2]};tag={to_tag}", None])
                else:
                    fields.append(list(field))
        for name, value in headers or ():
            fields.append([canonical_name(name), name, str(value).strip(), None])
        response._fields = fields
        response._body = bytes(body)
        return response

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.method, self.ruri, self.version, *self._eq_key()) == (
            other.method, other.ruri, other.version, *other._eq_key())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._start_line().split(' ')[1]}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason", "version")

    def __init__(self, status: int, reason: str | None = None,
                 headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                 version: str = "SIP/2.0") -> None:
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason
        self.version = version
        self._init_fields(headers, bytes(body))

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.reason, *self._eq_key()) == (
            other.status, other.reason, *other._eq_key())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# --- parsing ------------------------------------------------------------------------------
def _header_fields(lines: list[str]) -> list[list]:
    """[key, name, value, raw] for each header line (folding already merged)."""
    fields = []
    compact = _COMPACT
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError("Bad header line")
        key = name.rstrip(" \t").lower()
        if len(key) == 1:
            key = compact.get(key, key)
        elif not key:
            raise ParseError("Bad header line")
        if "\r\n" in value:
            value = _FOLD_RE.sub(" ", value)
        fields.append([key, name.rstrip(" \t"), value.strip(" \t"), line])
    return fields


def _merge_folded(lines: list[str]) -> list[str]:
    """Join continuation lines (starting with SP or HTAB) to the line above them."""
    merged: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and merged:
            merged[-1] += "\r\n" + line
        else:
            merged.append(line)
    return merged


def parse_message(data: bytes) -> Union[Request, Response]:
    """Parse one datagram (or one message framed off a stream) into a Request or Response."""
    if not isinstance(data, bytes):
        data = bytes(data)
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise ParseError("No end of header block")
    head = data[start:end].decode(_ENCODING, _ERRORS)
    lines = head.split("\r\n")
    if "\r\n " in head or "\r\n\t" in head:
        lines = _merge_folded(lines)
    first = lines[0]
    fields = _header_fields(lines[1:])
    body_start = end + 4

    line_error = None
    if first.startswith("SIP/"):
        m = _STATUS_RE.match(first)
        if m is None:
            raise ParseError("Bad status line")
        msg = Response.__new__(Response)
        msg.status = int(m.group(1))
        msg.reason = m.group(2) or ""
        msg.version = "SIP/2.0"
        request = None
    else:
        parts = first.split(" ")
        if len(parts) == 3 and _TOKEN_RE.match(parts[0]) is not None:
            method, ruri_text, version = parts
        else:
            # Extra spaces: still a request a 400 can answer, once its headers parsed.
            m = _LOOSE_REQUEST_LINE_RE.match(first)
            if m is None:
                raise ParseError("Bad request line")
            method, ruri_text, version = m.groups()
            line_error = "Bad Request-URI" if " " in ruri_text else "Bad Request-Line"
        msg = request = Request.__new__(Request)
        msg.method = method
        msg.version = version
        msg._ruri = None
        msg._ruri_text = ruri_text
    msg._fields = fields
    msg._cache = {}
    msg._orig_body = None

    # Routing-relevant headers: without these no response can be built.
    msg.via
    msg.from_
    msg.to
    msg.call_id
    try:
        cseq_method = msg._cseq()[1]
        deferred = None
    except ParseError as exc:
        if "cseq" not in msg._cache:
            raise
        cseq_method = msg._cache["cseq"][1]
        deferred = exc  # a well-formed CSeq out of range: still copied into a 400
    try:
        if deferred is not None:
            raise deferred
        if request is not None:
            if line_error is not None:
                raise ParseError(line_error)
            if request.version != "SIP/2.0":
                if _VERSION_RE.match(request.version):
                    raise ParseError("Version Not Supported", status=505)
                raise ParseError("Bad SIP version")
            if cseq_method != request.method:
                raise ParseError("CSeq method does not match the request's")
            try:
                request._ruri = ruri = parse_uri(ruri_text)
            except ParseError:
                raise ParseError("Bad Request-URI") from None
            if ruri.opaque is not None:
                raise ParseError("Unsupported URI Scheme", status=416)
            if ruri._htext:
                raise ParseError("Bad Request-URI")  # RFC 3261 §19.1.1: no headers here
            msg.max_forwards
        length = msg.content_length if any(f[0] == "content-length" for f in fields) else None
    except ParseError as exc:
        exc.request = request
        raise
    if length is None:
        msg._body = data[body_start:]
        msg._raw = data[start:] if start else data
    else:
        if body_start + length > len(data):
            raise ParseError("Bad Content-Length", request)
        msg._body = data[body_start:body_start + length]
        msg._raw = data[start:body_start + length]
    return msg
