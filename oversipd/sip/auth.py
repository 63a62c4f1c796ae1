"""Digest authentication of requests (SIP.md §14): `user = await auth.authenticate(request)`.

401 (WWW-Authenticate) for REGISTER and requests to us (a Request-URI of
ours without a user part), 407 (Proxy-Authenticate) for the rest, which a
server script proxies (to a user registered here, or elsewhere); one challenge per algorithm of
`[auth] algorithms`, in that order (RFC 8760).  An unknown user and a wrong
password get the same answer after the same work (a dummy HA1 is compared).
A store that cannot be reached gets 503 with Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import TYPE_CHECKING

from ..logger import Logger
from . import digest
from .core import limits
from .registrar_settings import AuthSettings
from .store import StoreError, StoreSettings

if TYPE_CHECKING:
    from .core.request import Request

NONCE_SECRET = "digest nonce"
RETRY_AFTER = "5"
# ACK and CANCEL cannot be challenged (RFC 3261 §22.1): they pass, named by their From user.
UNCHALLENGEABLE = ("ACK", "CANCEL")

_log = Logger("SIP auth")
_nonces: dict[tuple[str, int], digest.Nonces] = {}   # (store url, pid) -> its Nonces


_configured: StoreSettings[AuthSettings] = StoreSettings("auth")
configure = _configured.configure   # service.py, at start and reload
store = _configured.store
_require_settings = _configured.get


async def authenticate(request: "Request") -> str | None:
    """The authenticated user name; None once a 401/407 (or 503) was sent."""
    settings = _require_settings()
    method = request.sip_method
    if method in UNCHALLENGEABLE:
        return request.from_.uri.user or ""
    proxy_auth = method != "REGISTER" and not _to_us(request)
    try:
        nonces = await _nonces_for(settings)
        user, stale, guessed = await _check(request, settings, nonces, proxy_auth)
    except StoreError as error:
        _log.log_system_warn(f"authentication store: {error}")
        request.reply(503, headers=[("Retry-After", RETRY_AFTER)])
        return None
    if user is not None:
        return user
    if guessed:   # [limits] auth_failures: a source that keeps guessing gets 403 for a minute (SIP.md §15)
        limits.note_auth_failure(request)
    _challenge(request, settings, nonces, proxy_auth, stale)
    return None


async def _check(request: "Request", settings: AuthSettings, nonces: digest.Nonces,
                 proxy_auth: bool) -> tuple[str | None, bool, bool]:
    """(user, False, False) when the credentials hold; else (None, stale, whether a wrong
    password or an unknown user was tried)."""
    credentials = _credentials(request, settings, proxy_auth)
    if credentials is None:
        return None, False, False
    algorithm = credentials.get("algorithm", "MD5").upper()
    algorithm = "SHA-256" if algorithm == "SHA-256" else algorithm
    name = credentials.get("username", "")
    freshness = nonces.check(credentials.get("nonce", ""))
    if freshness == "bad" or algorithm not in settings.algorithms or credentials.get("qop", "auth") != "auth":
        return None, False, False
    known = await store().user(settings.realm, name)
    ha1 = (known or {}).get(algorithm) or digest.dummy_ha1(nonces.key, algorithm, name)
    expected = digest.expected_response(algorithm, ha1, request.sip_method, credentials)
    matched = hmac.compare_digest(expected, credentials.get("response", "").lower())
    if not (matched and known is not None):
        return None, False, True
    if freshness == "stale":   # right password, old nonce: the client retries without asking its user
        return None, True, False
    return name, False, False


def _credentials(request: "Request", settings: AuthSettings, proxy_auth: bool) -> dict[str, str] | None:
    """Our realm's Digest credentials of the request (the first with an algorithm we offer)."""
    header = "Proxy-Authorization" if proxy_auth else "Authorization"
    for value in request.headers(header):
        credentials = digest.parse_credentials(value)
        if credentials is not None and credentials.get("realm") == settings.realm:
            return credentials
    return None


def _challenge(request: "Request", settings: AuthSettings, nonces: digest.Nonces, proxy_auth: bool,
               stale: bool) -> None:
    nonce = nonces.make()
    header = "Proxy-Authenticate" if proxy_auth else "WWW-Authenticate"
    request.reply(407 if proxy_auth else 401,
                  headers=[(header, digest.challenge(settings.realm, nonce, algorithm, stale))
                           for algorithm in settings.algorithms])


async def _nonces_for(settings: AuthSettings) -> digest.Nonces:
    """This process's nonce maker: its key derived from the secret every node reads in the store."""
    key = (settings.store, os.getpid())
    nonces = _nonces.get(key)
    if nonces is None:
        secret = await store().secret(NONCE_SECRET, os.urandom(32).hex())
        derived = hmac.new(bytes.fromhex(secret), settings.realm.encode(), hashlib.sha256).digest()
        nonces = _nonces[key] = digest.Nonces(derived, settings.nonce_lifetime)
    nonces.lifetime = settings.nonce_lifetime
    return nonces


def _to_us(request: "Request") -> bool:
    """Addressed to this server itself (no user part): 401; a request for a user or elsewhere is proxied: 407."""
    return request.ruri.user is None and request.destination_myself()
