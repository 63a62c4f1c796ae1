"""The registrar (SIP.md §14, RFC 3261 §10.3, RFC 3327 Path, RFC 5626 §6 Outbound).

`await registrar.save(request, user)` applies a REGISTER to the location
store and answers it: 200 listing every binding of the address of record
with its remaining expires, or 4xx/5xx.  `await registrar.lookup(uri)` gives
the live bindings of an address of record; `Proxy.route(request,
targets=bindings)` forks to them.

A binding learnt straight from a client over a connection gets our own
Route with that connection's flow token on top of its Path: a request
routed to it leaves over that flow from any worker (the proxy sends it to
the token's flow), and from another node through this one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..logger import Logger
from .registrar_settings import RegistrarSettings
from .store import Binding, StoreError, StoreSettings
from .syntax.uri import SipUri, parse_name_addr, parse_uri

if TYPE_CHECKING:
    from .core.request import Request

RETRY_AFTER = "5"
CSEQ_OUT_OF_ORDER = (500, "CSeq Out Of Order")   # RFC 3261 §10.3 step 7: "the update MUST be aborted"
TOO_MANY_CONTACTS = (403, "Too Many Registered Contacts")
STREAM_TRANSPORTS = ("tcp", "tls", "ws", "wss")

_log = Logger("SIP registrar")


class Refused(Exception):
    """The REGISTER is answered with this status instead of 200."""

    def __init__(self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | None = None):
        super().__init__(status, reason)
        self.status, self.reason, self.headers = status, reason, headers or []


_configured: StoreSettings[RegistrarSettings] = StoreSettings("registrar")
configure = _configured.configure   # service.py, at start and reload
store = _configured.store
_require_settings = _configured.get


def aor_of(uri: SipUri) -> str:
    """The address of record a To URI or Request-URI names: sip:user@host, without port or params."""
    host = (uri.host or "").lower()
    return f"sip:{uri.user}@{host}" if uri.user else f"sip:{host}"


async def lookup(uri: SipUri | str) -> list[Binding]:
    """The live bindings of the address of record `uri` names, best q first ([] when none)."""
    if isinstance(uri, str):
        uri = parse_uri(uri)
    return await store().bindings(aor_of(uri), time.time())


async def save(request: "Request", user: str | None = None) -> None:
    """Apply a REGISTER and answer it (200 with every binding, or the refusal)."""
    settings = _require_settings()
    try:
        bindings, outbound = await _apply(request, settings, user, time.time())
    except Refused as refusal:
        request.reply(refusal.status, refusal.reason, headers=refusal.headers)
        return
    except StoreError as error:
        _log.log_system_warn(f"location store: {error}")
        request.reply(503, headers=[("Retry-After", RETRY_AFTER)])
        return
    request.reply(200, headers=_ok_headers(request, bindings, outbound, time.time()))


async def _apply(request: "Request", settings: RegistrarSettings, user: str | None,
                 now: float) -> tuple[list[Binding], bool]:
    to_uri = request.to.uri
    if not _serves(request, settings, to_uri):
        raise Refused(404, "Domain Not Served")
    if user is not None and to_uri.user != user:
        raise Refused(403, "Authenticated User Does Not Own This AoR")   # RFC 3261 §10.3 step 3
    aor = aor_of(to_uri)
    contacts = request.headers("Contact")
    current = {binding.key: binding for binding in await store().bindings(aor, now)}
    if any(value.strip() == "*" for value in contacts):
        await _remove_all(request, aor, contacts, current)
        return [], False
    changes = [_binding(request, settings, aor, value, now) for value in contacts]
    outbound = any(binding.reg_id for binding in changes)
    for binding in changes:
        _check_order(request, current.get(binding.key))
    after = dict(current)
    for binding in changes:
        if binding.expires <= now:
            after.pop(binding.key, None)
        else:
            after[binding.key] = binding
    if len(after) > settings.max_contacts and len(after) > len(current):
        raise Refused(*TOO_MANY_CONTACTS)
    for binding in changes:
        if binding.expires <= now:
            await store().remove(aor, binding.key)
        else:
            await store().put(binding)
    return sorted(after.values(), key=lambda b: (-b.q, -b.expires)), outbound


async def _remove_all(request: "Request", aor: str, contacts: list[str], current: dict[str, Binding]) -> None:
    """Contact: * with Expires: 0 (RFC 3261 §10.3 step 6): every binding goes, in CSeq order."""
    if len(contacts) != 1 or (request.header("Expires") or "").strip() != "0":
        raise Refused(400, "Contact * Needs Expires 0 And No Other Contact")
    for binding in current.values():
        _check_order(request, binding)
    for key in current:
        await store().remove(aor, key)


def _check_order(request: "Request", existing: Binding | None) -> None:
    if existing is not None and existing.call_id == request.call_id and request.cseq <= existing.cseq:
        raise Refused(*CSEQ_OUT_OF_ORDER)


def _binding(request: "Request", settings: RegistrarSettings, aor: str, value: str, now: float) -> Binding:
    try:
        contact = parse_name_addr(value)
    except Exception:
        raise Refused(400, "Bad Contact") from None
    expires = _expires(request, settings, contact.params.get("expires"))
    instance = (contact.params.get("+sip.instance") or "").strip('"')
    reg_id = _integer(contact.params.get("reg-id"), "reg-id") if instance else 0
    key = f"{instance} reg-id={reg_id}" if reg_id else (instance or str(contact.uri))
    q = _q(contact.params.get("q"))
    return Binding(aor, key, str(contact.uri), now + expires if expires else now, request.call_id, request.cseq,
                   tuple(_route_set(request)), instance, reg_id, q)


def _expires(request: "Request", settings: RegistrarSettings, param: str | None) -> int:
    """Seconds from the contact's expires, else Expires, else the default; 423 below min, max at most."""
    header = request.header("Expires")
    if param is not None:
        seconds = _integer(param, "expires")
    elif header is not None:
        seconds = _integer(header.strip(), "Expires")
    else:
        seconds = settings.default_expires
    if 0 < seconds < settings.min_expires:
        raise Refused(423, None, [("Min-Expires", str(settings.min_expires))])
    return min(seconds, settings.max_expires)


def _integer(text: str | None, what: str) -> int:
    if text is None or not text.isdigit() or len(text) > 10:
        raise Refused(400, f"Bad {what}")
    return int(text)


def _q(text: str | None) -> float:
    if text is None:
        return 1.0
    try:
        value = float(text)
    except ValueError:
        raise Refused(400, "Bad q") from None
    if not 0.0 <= value <= 1.0:
        raise Refused(400, "Bad q")
    return value


def _route_set(request: "Request") -> list[str]:
    """The Path the binding keeps: ours with the flow token first when the client is on our connection."""
    path = request.headers("Path")
    flow = request.source.flow   # (slot, flow id), also when another worker holds the connection
    engine = request._core.proxy
    if not path and request.transport in STREAM_TRANSPORTS and flow is not None and engine is not None \
            and len(request.via) == 1:
        return [engine.headers.route(request.transport, flow, outbound=True)]
    return path


def _serves(request: "Request", settings: RegistrarSettings, uri: SipUri) -> bool:
    host = (uri.host or "").lower().strip("[]")
    if settings.domains:
        return host in settings.domains
    return request._core.is_local(host, None)


def _ok_headers(request: "Request", bindings: list[Binding], outbound: bool, now: float) -> list[tuple[str, str]]:
    headers = [("Contact", f"<{binding.contact}>;expires={max(round(binding.expires - now), 0)}"
                           + (f';+sip.instance="{binding.instance}"' if binding.instance else "")
                           + (f";reg-id={binding.reg_id}" if binding.reg_id else ""))
               for binding in bindings]
    headers += [("Path", value) for value in request.headers("Path")]   # RFC 3327 §5.3
    if outbound:
        headers.append(("Require", "outbound"))
    headers.append(("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))))
    return headers
