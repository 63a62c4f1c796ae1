"""HTTP Digest for SIP (RFC 7616, RFC 8760), sans-I/O: HA1, responses, credentials, stateless nonces.

A nonce is `<time>.<random>.<mac>`: the MAC (HMAC-SHA-256 under a key every
node derives from one secret in the store) lets any worker of any node check
that we made it and how old it is, with nothing shared but that secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_MAC_BYTES = 12
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^\s,]+)\s*(,|$)')
_QUOTED_PAIR = re.compile(r"\\(.)")


def hexdigest(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    return hexdigest(algorithm, f"{user}:{realm}:{password}")


def ha1_all(user: str, realm: str, password: str) -> dict[str, str]:
    """What the store keeps of a user: HA1 per algorithm, never the password."""
    return {name: ha1(name, user, realm, password) for name in ALGORITHMS}


def dummy_ha1(key: bytes, algorithm: str, user: str) -> str:
    """An HA1 for a user who does not exist: as much work as a real one, and never matching."""
    return hmac.new(key, f"no such user:{algorithm}:{user}".encode(), hashlib.sha256).hexdigest()


def expected_response(algorithm: str, ha1_value: str, method: str, credentials: dict[str, str]) -> str:
    """RFC 7616 §3.4.1 with qop=auth; RFC 2069's form when the client sent no qop."""
    ha2 = hexdigest(algorithm, f"{method}:{credentials.get('uri', '')}")
    nonce = credentials.get("nonce", "")
    if credentials.get("qop"):
        return hexdigest(algorithm, f"{ha1_value}:{nonce}:{credentials.get('nc', '')}:"
                                    f"{credentials.get('cnonce', '')}:{credentials['qop']}:{ha2}")
    return hexdigest(algorithm, f"{ha1_value}:{nonce}:{ha2}")


def parse_credentials(value: str) -> dict[str, str] | None:
    """`Digest k=v, k="v"` -> {k: v} (names lower-case); None for another scheme or bad syntax."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None:
            return None
        raw = match.group(3)
        params[match.group(1).lower()] = match.group(2) if raw is None else _unquoted(raw)
        position = match.end()
    return params


def _unquoted(raw: str) -> str:
    """A quoted-string's content with its quoted pairs undone (RFC 3261 §25.1); most have none."""
    return _QUOTED_PAIR.sub(r"\1", raw) if "\\" in raw else raw


def challenge(realm: str, nonce: str, algorithm: str, stale: bool) -> str:
    return (f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"'
            + (", stale=true" if stale else ""))


class Nonces:
    """Makes and checks nonces under one key; `now` is passed in (tests move it)."""

    def __init__(self, key: bytes, lifetime: float) -> None:
        self.key = key
        self.lifetime = lifetime

    def make(self, now: float | None = None) -> str:
        stamp = f"{int(now if now is not None else time.time()):x}"
        salt = base64.urlsafe_b64encode(os.urandom(9)).decode()
        return f"{stamp}.{salt}.{self._mac(stamp, salt)}"

    def check(self, nonce: str, now: float | None = None) -> str:
        """"fresh", "stale" (ours, too old) or "bad" (not ours)."""
        stamp, _, rest = nonce.partition(".")
        salt, _, mac = rest.partition(".")
        if not mac or not hmac.compare_digest(mac, self._mac(stamp, salt)):
            return "bad"
        try:
            made = int(stamp, 16)
        except ValueError:
            return "bad"
        age = (now if now is not None else time.time()) - made
        return "fresh" if -5 <= age <= self.lifetime else "stale"

    def _mac(self, stamp: str, salt: str) -> str:
        digest = hmac.new(self.key, f"{stamp}.{salt}".encode(), hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(digest).decode()
