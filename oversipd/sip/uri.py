"""SIP values: SipUri (sip, sips, tel and opaque schemes), NameAddr and Via.

Every parse function is total: it returns a value or raises ParseError.
A value parsed from text keeps that text and gives it back from str() as
long as it was not edited, so that forwarding a message does not rewrite it.

`SipUri.user` keeps %-escapes as written (``sip:a%40b@host`` has user
``a%40b``): unescaping would make the text ambiguous to write back and
RFC 3261 §19.1.4 compares users escaped-insensitively anyway; `unescape()`
is there for who needs the characters.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from .errors import ParseError

__all__ = ["SipUri", "NameAddr", "Via", "parse_uri", "parse_name_addr", "parse_via",
           "parse_params", "quote_display_name", "unescape"]

# RFC 3261 §25.1 token characters.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_QUOTED = r'"(?:[^"\\]|\\[\x00-\x7f])*"'
# A header parameter: ;name[=token|host|quoted-string], LWS allowed around ; and =.
_HPARAM = rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*(=)[ \t]*({_QUOTED}|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*|{_TOKEN}))?"
_HPARAM_RE = re.compile(_HPARAM)
_HPARAMS_RE = re.compile(rf"(?:{_HPARAM})*[ \t]*")

# URI parameter and header characters (RFC 3261 §25.1 paramchar, hnv-unreserved).
_PCHAR = r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]"
_UPARAM_RE = re.compile(rf";({_PCHAR}+)(?:(=)({_PCHAR}*))?")
_UPARAMS_RE = re.compile(rf"(?:;{_PCHAR}+(?:={_PCHAR}*)?)*")
_UHEADERS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]+=[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]*"
                          r"(?:&[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]+=[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]*)*")

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_SIP_RE = re.compile(r"""
    (?:(?P<user>[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+)
       (?::(?P<password>[A-Za-z0-9\-_.!~*'()&=+$,%]*))?@)?
    (?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)
    (?::(?P<port>[0-9]{1,5}))?
    (?P<params>(?:;[^;?]*)*)
    (?:\?(?P<headers>.*))?
    \Z""", re.X | re.S)
_TEL_RE = re.compile(r"(?P<user>[0-9A-Fa-f*#+\-.()pPwW]+)(?P<params>(?:;[^;]*)*)\Z")
_OPAQUE_RE = re.compile(r"[^\s<>\"]+\Z")

_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+")


def unescape(text: str) -> str:
    """The characters behind %-escapes (``a%40b`` → ``a@b``)."""
    return unquote(text, errors="surrogateescape")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_params(text: str, what: str = "parameters") -> dict[str, str | None]:
    """Header parameters (`;a=b;flag`) from text that starts at the first `;`."""
    if not text:
        return {}
    if _HPARAMS_RE.fullmatch(text) is None:
        raise ParseError(f"Bad {what}")
    return {name.lower(): (value if eq else None) for name, eq, value in _HPARAM_RE.findall(text)}


def _parse_uri_params(text: str) -> dict[str, str | None]:
    return {name.lower(): (value if eq else None) for name, eq, value in _UPARAM_RE.findall(text)}


def _parse_uri_headers(text: str) -> dict[str, str]:
    return dict(pair.partition("=")[::2] for pair in text.split("&"))


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


class SipUri:
    """A sip:, sips:, tel: or other-scheme URI; host without IPv6 brackets."""

    __slots__ = ("scheme", "user", "password", "host", "port", "_ptext", "_params",
                 "_htext", "_headers", "opaque", "_text", "_orig")

    def __init__(self, scheme: str = "sip", user: str | None = None, host: str | None = None,
                 port: int | None = None, params: dict[str, str | None] | None = None,
                 headers: dict[str, str] | None = None, password: str | None = None,
                 opaque: str | None = None) -> None:
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self._ptext = ""
        self._params = params if params is not None else {}
        self._htext = ""
        self._headers = headers if headers is not None else {}
        self.opaque = opaque
        self._text: str | None = None
        self._orig: tuple | None = None

    @property
    def params(self) -> dict[str, str | None]:
        if self._params is None:
            self._params = _parse_uri_params(self._ptext)
        return self._params

    @params.setter
    def params(self, value: dict[str, str | None]) -> None:
        self._params = value

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = _parse_uri_headers(self._htext) if self._htext else {}
        return self._headers

    @headers.setter
    def headers(self, value: dict[str, str]) -> None:
        self._headers = value

    @property
    def transport(self) -> str | None:
        """The `transport` parameter, lower-case, or None."""
        value = self.params.get("transport")
        return value.lower() if value else None

    def _unedited(self) -> bool:
        if self._text is None or self._orig != (self.scheme, self.user, self.password,
                                                self.host, self.port, self.opaque):
            return False
        if self._params is not None and self._params != _parse_uri_params(self._ptext):
            return False
        if self._headers is not None and self._headers != (
                _parse_uri_headers(self._htext) if self._htext else {}):
            return False
        return True

    def __str__(self) -> str:
        if self._unedited():
            return self._text  # type: ignore[return-value]
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += (":", self.password)
            if self.host is not None:
                parts.append("@")
        if self.host is not None:
            parts.append(_bracket(self.host))
        if self.port is not None:
            parts.append(f":{self.port}")
        parts.append(_format_params(self.params))
        if self.headers:
            parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"

    def _key(self) -> tuple:
        return (self.scheme, self.user, self.password, self.host.lower() if self.host else None,
                self.port, self.params, self.headers, self.opaque)

    def __eq__(self, other: object) -> bool:
        """Component equality (case-insensitive scheme and host), not RFC 3261 §19.1.4's."""
        if not isinstance(other, SipUri):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> SipUri:
        """An independent copy (edits to it do not touch this one)."""
        return parse_uri(str(self))


def parse_uri(text: str) -> SipUri:
    """Parse a URI; sip/sips/tel are decomposed, other schemes kept opaque."""
    m = _SCHEME_RE.match(text)
    if m is None:
        raise ParseError("Bad URI")
    scheme = m.group(1).lower()
    rest = text[m.end():]
    uri = SipUri.__new__(SipUri)
    uri.scheme = scheme
    uri.password = None
    uri.port = None
    uri.opaque = None
    uri._headers = {}
    uri._htext = ""
    uri._params = None
    if scheme == "sip" or scheme == "sips":
        m = _SIP_RE.match(rest)
        if m is None:
            raise ParseError("Bad URI")
        user, password, host, port, ptext, htext = m.groups()
        if ptext and _UPARAMS_RE.fullmatch(ptext) is None:
            raise ParseError("Bad URI parameters")
        if htext is not None:
            if _UHEADERS_RE.fullmatch(htext) is None:
                raise ParseError("Bad URI headers")
            uri._htext = htext
            uri._headers = None
        if port is not None:
            port = int(port)
            if port > 65535:
                raise ParseError("Bad URI port")
        if host[0] == "[":
            host = host[1:-1]
        uri.user = user
        uri.password = password
        uri.host = host
        uri.port = port
        uri._ptext = ptext
    elif scheme == "tel":
        m = _TEL_RE.match(rest)
        if m is None or (m.group("params") and _UPARAMS_RE.fullmatch(m.group("params")) is None):
            raise ParseError("Bad URI")
        uri.user = m.group("user")
        uri.host = None
        uri._ptext = m.group("params")
    else:
        if _OPAQUE_RE.match(rest) is None:
            raise ParseError("Bad URI")
        uri.user = None
        uri.host = None
        uri._ptext = ""
        uri._params = {}
        uri.opaque = rest
    uri._text = text
    uri._orig = (uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.opaque)
    return uri


# --- name-addr / addr-spec (From, To, Contact, Route, Record-Route ...) -------------
_NAME_ADDR_RE = re.compile(rf"""
    (?:(?P<quoted>{_QUOTED})[ \t]*
      |(?P<tokens>{_TOKEN}(?:[ \t]+{_TOKEN})*)[ \t]*)?
    <(?P<uri>[^<>\s]+)>
    (?P<params>.*)\Z""", re.X | re.S)
_ADDR_SPEC_RE = re.compile(r"(?P<uri>[^;\s<>\",?]+)(?P<params>.*)\Z", re.S)
_UNQUOTE_RE = re.compile(r"\\(.)", re.S)


def quote_display_name(name: str) -> str:
    """A display name as a quoted-string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NameAddr:
    """`"Display" <uri>;params` as in From, To, Contact, Route."""

    __slots__ = ("display_name", "uri", "params", "_text", "_orig")

    def __init__(self, uri: SipUri, display_name: str | None = None,
                 params: dict[str, str | None] | None = None) -> None:
        self.uri = uri
        self.display_name = display_name
        self.params = params if params is not None else {}
        self._text: str | None = None
        self._orig: tuple | None = None

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @tag.setter
    def tag(self, value: str | None) -> None:
        if value is None:
            self.params.pop("tag", None)
        else:
            self.params["tag"] = value

    def __str__(self) -> str:
        if self._text is not None and self._orig == (self.display_name, self.uri, self.params) \
                and self.uri._unedited():
            return self._text
        name = "" if self.display_name is None else quote_display_name(self.display_name) + " "
        return f"{name}<{self.uri}>{_format_params(self.params)}"

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return (self.display_name, self.uri, self.params) == (
            other.display_name, other.uri, other.params)

    __hash__ = None  # type: ignore[assignment]


def parse_name_addr(text: str) -> NameAddr:
    """Parse a name-addr or addr-spec with header parameters."""
    text = text.strip()
    m = _NAME_ADDR_RE.match(text)
    if m is not None:
        quoted, tokens, uri_text, ptext = m.groups()
        if quoted is not None:
            display = _UNQUOTE_RE.sub(r"\1", quoted[1:-1]) if "\\" in quoted else quoted[1:-1]
        else:
            display = tokens
    else:
        m = _ADDR_SPEC_RE.match(text)
        if m is None:
            raise ParseError("Bad address")
        display = None
        uri_text, ptext = m.groups()
    uri = parse_uri(uri_text)
    na = NameAddr.__new__(NameAddr)
    na.uri = uri
    na.display_name = display
    na.params = parse_params(ptext, "address parameters")
    na._text = text
    na._orig = (display, uri, dict(na.params))
    return na


# --- Via -------------------------------------------------------------------------------
_VIA_RE = re.compile(rf"""
    ({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+
    (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)
    (?:[ \t]*:[ \t]*([0-9]{{1,5}}))?
    ((?:{_HPARAM})*)[ \t]*\Z""", re.X)


class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...`."""

    __slots__ = ("protocol", "transport", "host", "port", "params", "_text", "_orig")

    def __init__(self, host: str, port: int | None = None, transport: str = "UDP",
                 params: dict[str, str | None] | None = None, protocol: str = "SIP/2.0") -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params = params if params is not None else {}
        self._text: str | None = None
        self._orig: tuple | None = None

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> str | None:
        """None when absent, "" when a flag, else the value."""
        params = self.params
        if "rport" not in params:
            return None
        value = params["rport"]
        return "" if value is None else value

    def _key(self) -> tuple:
        return (self.protocol, self.transport, self.host, self.port, self.params)

    def __str__(self) -> str:
        if self._text is not None and self._orig == self._key():
            return self._text
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {_bracket(self.host)}{port}{_format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


def parse_via(text: str) -> Via:
    """Parse one Via value (not a comma-separated list)."""
    text = text.strip()
    m = _VIA_RE.match(text)
    if m is None:
        raise ParseError("Bad Via")
    name, version, transport, host, port, ptext = m.group(1, 2, 3, 4, 5, 6)
    via = Via.__new__(Via)
    via.protocol = f"{name}/{version}"
    via.transport = transport.upper()
    via.host = host[1:-1] if host[0] == "[" else host
    if port is not None:
        port = int(port)
        if port > 65535:
            raise ParseError("Bad Via")
    via.port = port
    via.params = {n.lower(): (v if eq else None) for n, eq, v in _HPARAM_RE.findall(ptext)} \
        if ptext else {}
    via._text = text
    via._orig = (via.protocol, via.transport, via.host, via.port, dict(via.params))
    return via
