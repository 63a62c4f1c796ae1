"""SIP values: SipUri (sip, sips, tel and opaque schemes), NameAddr and Via.

Every parse function is total: it returns a value or raises ParseError.
A value parsed from text keeps that text and gives it back from str() as
long as it was not edited, so that forwarding a message does not rewrite it.
Parameters are checked when the value is parsed but split into their dict
only when first read: most messages are forwarded without anyone reading them.

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
_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = rf"[{_TOKEN_CHARS}]+"
_QUOTED = r'"(?:[^"\\]|\\[\x00-\x7f])*"'
# A header parameter: ;name[=token|host|quoted-string], LWS allowed around ; and =.
_HPARAM = (rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*(=)[ \t]*({_QUOTED}|\[[0-9A-Fa-f:.]+\]"
           rf"|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*|{_TOKEN}))?")
_HPARAM_RE = re.compile(_HPARAM)
_HPARAMS_RE = re.compile(rf"(?:{_HPARAM})*[ \t]*")
# The same without LWS or quoted strings: what nearly every message has.
_HPARAMS_PLAIN = rf"(?:;{_TOKEN}(?:=[{_TOKEN_CHARS}:\[\]]+)?)*"

# URI parameter and header characters (RFC 3261 §25.1 paramchar, hnv-unreserved).
_PCHAR = r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]"
_HCHAR = r"[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]"
# sip:/sips: URIs; groups: scheme, user, password, host, port, parameters, headers.
_SIP_URI = rf"""
    ([sS][iI][pP][sS]?):
    (?:([A-Za-z0-9\-_.!~*'()&=+$,;?/%]+)(?::([A-Za-z0-9\-_.!~*'()&=+$,%]*))?@)?
    (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)
    (?::([0-9]{{1,5}}))?
    ((?:;{_PCHAR}+(?:={_PCHAR}*)?)*)
    (?:\?({_HCHAR}+={_HCHAR}*(?:&{_HCHAR}+={_HCHAR}*)*))?"""
_SIP_URI_RE = re.compile(_SIP_URI + r"\Z", re.X)
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_TEL_RE = re.compile(rf"([0-9A-Fa-f*#+\-.()pPwW]+)((?:;{_PCHAR}+(?:={_PCHAR}*)?)*)\Z")
_OPAQUE_RE = re.compile(r"[^\s<>\"]+\Z")


def unescape(text: str) -> str:
    """The characters behind %-escapes (``a%40b`` → ``a@b``)."""
    return unquote(text, errors="surrogateescape")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_params(text: str) -> dict[str, str | None]:
    """`;a=b;flag` (already checked) as a dict, names lower-case."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if '"' in text or " " in text or "\t" in text:
        for name, eq, value in _HPARAM_RE.findall(text):
            params[name.lower()] = value if eq else None
        return params
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        params[name.lower()] = value if eq else None
    return params


def _last_param(text: str, name: str, needle: str) -> str | None:
    """The value of `;name=value` (needle: ";name=") in plain parameter text (no quotes,
    no LWS), or None when it is absent or a flag: _split_params(text).get(name), quicker."""
    lowered = text.lower()
    at = lowered.rfind(needle)
    if at < 0:
        return _split_params(text).get(name) if needle[:-1] in lowered else None
    start = at + len(needle)
    end = text.find(";", start)
    return text[start:] if end < 0 else text[start:end]


def parse_params(text: str, what: str = "parameters") -> dict[str, str | None]:
    """Header parameters (`;a=b;flag`) from text that starts at the first `;`."""
    if text and _HPARAMS_RE.fullmatch(text) is None:
        raise ParseError(f"Bad {what}")
    return _split_params(text.rstrip(" \t"))


def _split_uri_headers(text: str) -> dict[str, str]:
    return dict(pair.partition("=")[::2] for pair in text.split("&")) if text else {}


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


class _Parameters:
    """The `;name=value` parameters of a URI, a name-addr or a Via, split from their text when first read."""

    __slots__ = ("_ptext", "_params")

    @property
    def params(self) -> dict[str, str | None]:
        """The parameters, names lower-case, None for a flag (`lr`, `rport`)."""
        if self._params is None:
            self._params = _split_params(self._ptext)
        return self._params

    @params.setter
    def params(self, value: dict[str, str | None]) -> None:
        self._params = value

    def _param(self, name: str, needle: str) -> str | None:
        """`params.get(name)` (needle: ";name="), read without splitting plain parameter text."""
        ptext = self._ptext
        if self._params is None and '"' not in ptext and " " not in ptext and "\t" not in ptext:
            return _last_param(ptext, name, needle) if ptext else None
        return self.params.get(name)


class SipUri(_Parameters):
    """A sip:, sips:, tel: or other-scheme URI; host without IPv6 brackets."""

    # _parsed: scheme, user, password, host, port and opaque as parsed from _text,
    # so that str() knows without parsing _text again whether it may give it back.
    __slots__ = ("scheme", "user", "password", "host", "port", "opaque", "_htext", "_headers", "_text",
                 "_parsed")

    def __init__(self, scheme: str = "sip", user: str | None = None, host: str | None = None,
                 port: int | None = None, params: dict[str, str | None] | None = None,
                 headers: dict[str, str] | None = None, password: str | None = None,
                 opaque: str | None = None) -> None:
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.opaque = opaque
        self._ptext = ""
        self._params = params if params is not None else {}
        self._htext = ""
        self._headers = headers if headers is not None else {}
        self._text: str | None = None
        self._parsed: tuple | None = None

    @property
    def headers(self) -> dict[str, str]:
        """URI headers (`?subject=x&priority=y`)."""
        if self._headers is None:
            self._headers = _split_uri_headers(self._htext)
        return self._headers

    @headers.setter
    def headers(self, value: dict[str, str]) -> None:
        self._headers = value

    @property
    def transport(self) -> str | None:
        """The `transport` parameter, lower-case, or None."""
        value = self.params.get("transport")
        return value.lower() if value else None

    def _exact(self) -> tuple:
        return (self.scheme, self.user, self.password, self.host, self.port, self.opaque,
                self.params, self.headers)

    def _scalars(self) -> tuple:
        return (self.scheme, self.user, self.password, self.host, self.port, self.opaque)

    def _unedited(self) -> bool:
        """Nothing changed since it was parsed from _text (parameters split or not)."""
        if self._text is None or self._scalars() != self._parsed:
            return False
        params, headers = self._params, self._headers
        return ((params is None or params == _split_params(self._ptext))
                and (headers is None or headers == _split_uri_headers(self._htext)))

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

    def __eq__(self, other: object) -> bool:
        """Component equality (case-insensitive scheme and host), not RFC 3261 §19.1.4's."""
        if not isinstance(other, SipUri):
            return NotImplemented
        return self._key() == other._key()

    def _key(self) -> tuple:
        return (self.scheme, self.user, self.password, self.host.lower() if self.host else None,
                self.port, self.opaque, self.params, self.headers)

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> SipUri:
        """An independent copy (edits to it do not touch this one), made field by field."""
        twin = SipUri.__new__(SipUri)
        twin.scheme, twin.user, twin.password, twin.host, twin.port, twin.opaque = self._scalars()
        twin._text, twin._parsed, twin._ptext, twin._htext = self._text, self._parsed, self._ptext, self._htext
        twin._params = None if self._params is None else dict(self._params)
        twin._headers = None if self._headers is None else dict(self._headers)
        return twin


def _sip_uri(text: str, scheme: str, user: str | None, password: str | None, host: str,
             port: str | None, ptext: str, htext: str | None) -> SipUri:
    """A SipUri from the groups of _SIP_URI."""
    uri = SipUri.__new__(SipUri)
    uri._text = text
    uri.scheme = scheme.lower()
    uri.user = user
    uri.password = password
    uri.host = host[1:-1] if host[0] == "[" else host
    if port is None:
        uri.port = None
    else:
        uri.port = int(port)
        if uri.port > 65535:
            raise ParseError("Bad URI port")
    uri.opaque = None
    uri._ptext = ptext
    uri._params = None if ptext else {}
    if htext is None:
        uri._htext = ""
        uri._headers = {}
    else:
        uri._htext = htext
        uri._headers = None
    uri._parsed = (uri.scheme, user, password, uri.host, uri.port, None)
    return uri


def parse_uri(text: str) -> SipUri:
    """Parse a URI; sip/sips/tel are decomposed, other schemes kept opaque."""
    m = _SIP_URI_RE.match(text)
    if m is not None:
        return _sip_uri(text, *m.groups())
    uri = SipUri.__new__(SipUri)
    uri._text = text
    m = _SCHEME_RE.match(text)
    if m is None:
        raise ParseError("Bad URI")
    uri.scheme = scheme = m.group(1).lower()
    rest = text[m.end():]
    if scheme == "sip" or scheme == "sips":
        raise ParseError("Bad URI")
    uri.password = None
    uri.host = None
    uri.port = None
    uri._htext = ""
    uri._headers = {}
    if scheme == "tel":
        m = _TEL_RE.match(rest)
        if m is None:
            raise ParseError("Bad URI")
        uri.user, uri._ptext = m.groups()
        uri._params = None
        uri.opaque = None
    else:
        if _OPAQUE_RE.match(rest) is None:
            raise ParseError("Bad URI")
        uri.user = None
        uri._ptext = ""
        uri._params = {}
        uri.opaque = rest
    uri._parsed = uri._scalars()
    return uri


# --- name-addr / addr-spec (From, To, Contact, Route, Record-Route ...) -------------
# What nearly every From/To looks like: `"Name" <uri>;tag=x`, `Name <uri>`, `uri;tag=x`.
_NAME_ADDR_PLAIN_RE = re.compile(rf"""
    (?:"([^"\\]*)"\ ?|({_TOKEN}(?:\ {_TOKEN})*)\ ?)?<({_SIP_URI})>({_HPARAMS_PLAIN})\Z""", re.X)
_ADDR_SPEC_PLAIN_RE = re.compile(rf"""
    (([sS][iI][pP][sS]?):
    (?:([A-Za-z0-9\-_.!~*'()&=+$%]+)(?::([A-Za-z0-9\-_.!~*'()&=+$%]*))?@)?
    (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?::([0-9]{{1,5}}))?)({_HPARAMS_PLAIN})\Z""", re.X)
_NAME_ADDR_RE = re.compile(rf"""
    (?:"((?:[^"\\]|\\[\x00-\x7f])*)"[ \t]*
      |({_TOKEN}(?:[ \t]+{_TOKEN})*)[ \t]*)?
    <([^<>\s]+)>
    ((?:{_HPARAM})*)[ \t]*\Z""", re.X)
_ADDR_SPEC_RE = re.compile(rf"([^;\s<>\",?]+)((?:{_HPARAM})*)[ \t]*\Z")
_UNQUOTE_RE = re.compile(r"\\(.)", re.S)


def quote_display_name(name: str) -> str:
    """A display name as a quoted-string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NameAddr(_Parameters):
    """`"Display" <uri>;params` as in From, To, Contact, Route."""

    __slots__ = ("display_name", "uri", "_text")

    def __init__(self, uri: SipUri, display_name: str | None = None,
                 params: dict[str, str | None] | None = None) -> None:
        self.uri = uri
        self.display_name = display_name
        self._ptext = ""
        self._params = params if params is not None else {}
        self._text: str | None = None

    @property
    def tag(self) -> str | None:
        return self._param("tag", ";tag=")

    @tag.setter
    def tag(self, value: str | None) -> None:
        if value is None:
            self.params.pop("tag", None)
        else:
            self.params["tag"] = value

    def _exact(self) -> tuple:
        return (self.display_name, self.uri._exact(), self.params)

    def __str__(self) -> str:
        if self._text is not None and self._exact() == parse_name_addr(self._text)._exact():
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
    na = NameAddr.__new__(NameAddr)
    m = _NAME_ADDR_PLAIN_RE.match(text)
    if m is not None:  # "Name" <sip:...>;params, the usual From and To
        display, tokens, uri_text, scheme, user, password, host, port, uptext, htext, ptext = \
            m.groups()
        na.uri = _sip_uri(uri_text, scheme, user, password, host, port, uptext, htext)
        na.display_name = tokens if display is None else display
        na._ptext = ptext
        na._params = None if ptext else {}
        na._text = text
        return na
    m = _ADDR_SPEC_PLAIN_RE.match(text)
    if m is not None:  # sip:user@host;tag=x
        uri_text, scheme, user, password, host, port, ptext = m.groups()
        na.uri = _sip_uri(uri_text, scheme, user, password, host, port, "", None)
        na.display_name = None
        na._ptext = ptext
        na._params = None if ptext else {}
        na._text = text
        return na
    text = text.strip()
    m = _NAME_ADDR_RE.match(text)
    if m is not None:
        quoted, display, uri_text, ptext = m.groups()[:4]
        if quoted is not None:
            display = _UNQUOTE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
    else:
        m = _ADDR_SPEC_RE.match(text)
        if m is None:
            raise ParseError("Bad address")
        uri_text, ptext = m.groups()[:2]
        display = None
    na.uri = parse_uri(uri_text)
    na.display_name = display
    na._ptext = ptext = ptext.rstrip(" \t")
    na._params = None if ptext else {}
    na._text = text
    return na


# --- Via -------------------------------------------------------------------------------
_VIA_PLAIN_RE = re.compile(rf"""
    SIP/2\.0/({_TOKEN})\ (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?::([0-9]{{1,5}}))?
    ({_HPARAMS_PLAIN})\Z""", re.X)
_VIA_RE = re.compile(rf"""
    ({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+
    (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)
    (?:[ \t]*:[ \t]*([0-9]{{1,5}}))?
    ((?:{_HPARAM})*)[ \t]*\Z""", re.X)


class Via(_Parameters):
    """One Via value: `SIP/2.0/UDP host:port;branch=...`."""

    __slots__ = ("protocol", "transport", "host", "port", "_text")

    def __init__(self, host: str, port: int | None = None, transport: str = "UDP",
                 params: dict[str, str | None] | None = None, protocol: str = "SIP/2.0") -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self._ptext = ""
        self._params = params if params is not None else {}
        self._text: str | None = None

    @property
    def branch(self) -> str | None:
        return self._param("branch", ";branch=")

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

    def _exact(self) -> tuple:
        return (self.protocol, self.transport, self.host, self.port, self.params)

    def __str__(self) -> str:
        if self._text is not None and self._exact() == parse_via(self._text)._exact():
            return self._text
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {_bracket(self.host)}{port}{_format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return self._exact() == other._exact()

    __hash__ = None  # type: ignore[assignment]


def check_via(text: str) -> None:
    """Raise ParseError unless `text` is one Via value (parse_via's check, without a Via)."""
    m = _VIA_PLAIN_RE.match(text)
    if m is not None:
        port = m.group(3)
    else:
        m = _VIA_RE.match(text.strip())
        if m is None:
            raise ParseError("Bad Via")
        port = m.group(5)
    if port is not None and int(port) > 65535:
        raise ParseError("Bad Via")


def parse_via(text: str) -> Via:
    """Parse one Via value (not a comma-separated list)."""
    via = Via.__new__(Via)
    m = _VIA_PLAIN_RE.match(text)
    if m is not None:
        via.protocol = "SIP/2.0"
        transport, host, port, via._ptext = m.groups()
    else:
        text = text.strip()
        m = _VIA_RE.match(text)
        if m is None:
            raise ParseError("Bad Via")
        name, version, transport, host, port, via._ptext = m.group(1, 2, 3, 4, 5, 6)
        via.protocol = f"{name}/{version}"
    via.transport = transport.upper()
    via.host = host[1:-1] if host[0] == "[" else host
    if port is not None:
        port = int(port)
        if port > 65535:
            raise ParseError("Bad Via")
    via.port = port
    via._params = None
    via._text = text
    return via
