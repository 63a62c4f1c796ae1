"""The `[sip]` and `[limits]` tables (SIP.md §8, §15), validated into frozen dataclasses."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..addresses import ListenSettings
from ..errors import ConfigError
from .checks import checked_table, checked_values, integer_at_least
from .transport_settings import SECURE_SCHEMES, TlsSettings, WebSocketSettings, parse_tls_table, \
    parse_websocket_table

DEFAULT_MAX_MESSAGE_SIZE = 65535
MIN_MESSAGE_SIZE = 1024          # smaller would refuse ordinary INVITEs
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_TCP_IDLE_TIMEOUT = 300.0
# A host name as RFC 3261's `hostname` allows it (letters, digits, '-', dots).
HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")


@dataclass(frozen=True)
class LimitSettings:
    """`[limits]` (SIP.md §15): what one worker accepts before it refuses; 0 turns a rate limit off."""

    max_transactions: int = 100000    # server + client transactions per worker
    max_connections: int = 10000      # accepted TCP connections per worker
    per_source_rate: int = 0          # requests per second per source IP
    auth_failures: int = 10           # failed authentications per source IP per minute


@dataclass(frozen=True)
class SipSettings:
    listen: tuple[str, ...]
    advertised_host: str = ""
    local_domains: tuple[str, ...] = ()
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT
    limits: LimitSettings = field(default_factory=LimitSettings)
    tls: TlsSettings = TlsSettings()                 # [tls] (SIP.md §12)
    websocket: WebSocketSettings = WebSocketSettings()   # [websocket]
    schemes: tuple[str, ...] = ()                    # the scheme of each listener of `listen`, in order


def _host(value: Any) -> str:
    """An IP literal or a host name; lower-case, IPv6 without brackets."""
    if not isinstance(value, str):
        raise ValueError(f"expected a host name or IP address, got {value!r}")
    text = value.strip("[]") if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return value.lower().rstrip(".")


def _advertised_host(value: Any) -> str:
    return "" if value == "" else _host(value)


def _local_domains(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of domains, got {value!r}")
    return tuple(_host(item) for item in value)


def _max_message_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_MESSAGE_SIZE <= value <= MAX_MESSAGE_SIZE:
        raise ValueError(f"expected an integer from {MIN_MESSAGE_SIZE} to {MAX_MESSAGE_SIZE}, got {value!r}")
    return value


def _tcp_idle_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"expected a number of seconds > 0, got {value!r}")
    return float(value)


SIP_KEYS: dict[str, Callable[[Any], Any]] = {
    "advertised_host": _advertised_host,
    "local_domains": _local_domains,
    "max_message_size": _max_message_size,
    "tcp_idle_timeout": _tcp_idle_timeout,
}


LIMIT_KEYS: dict[str, Callable[[Any], int]] = {
    "max_transactions": integer_at_least(1),
    "max_connections": integer_at_least(1),
    "per_source_rate": integer_at_least(0),
    "auth_failures": integer_at_least(0),
}


def parse_limits_table(table: Any, source: str) -> LimitSettings:
    """The `[limits]` table -> LimitSettings; every mistake names file and key."""
    return LimitSettings(**checked_table(table, LIMIT_KEYS, source, "limits"))


def parse_sip_table(table: Any, listen: dict[str, ListenSettings], source: str,
                    limits: LimitSettings = LimitSettings(), tls: Any = None, websocket: Any = None) -> SipSettings:
    """The `[sip]` table (with the parsed `[limits]`, and `[tls]`, `[websocket]`) -> SipSettings;
    every mistake names file and key."""
    if not isinstance(table, dict):
        raise ConfigError(source, "sip", "expected a table [sip]")
    values = checked_values({key: value for key, value in table.items() if key != "listen"}, SIP_KEYS, source, "sip")
    names = _listen_names(table.get("listen"), listen, source)
    schemes = tuple(listen[name].scheme for name in names)
    needs_certificate = any(scheme in SECURE_SCHEMES for scheme in schemes)
    if tls is None and needs_certificate:
        raise ConfigError(source, "tls", "missing: a tls or wss listener needs [tls] certificate and private_key")
    values["tls"] = parse_tls_table({} if tls is None else tls, source, needs_certificate)
    values["websocket"] = parse_websocket_table({} if websocket is None else websocket, source)
    return SipSettings(listen=names, schemes=schemes, limits=limits, **values)


def _listen_names(value: Any, listen: dict[str, ListenSettings], source: str) -> tuple[str, ...]:
    where = "sip.listen"
    if value is None:
        raise ConfigError(source, where, 'missing (e.g. listen = ["sip_udp", "sip_tcp"])')
    if not isinstance(value, list) or not value or not all(isinstance(name, str) for name in value):
        raise ConfigError(source, where, f"expected a non-empty list of [listen.NAME] names, got {value!r}")
    for name in value:
        section = listen.get(name)
        if section is None:
            raise ConfigError(source, where, f"{name!r}: no [listen.{name}] section")
        if section.scheme == "unix":
            raise ConfigError(source, where, f"{name!r}: SIP runs on udp, tcp, tls, ws or wss, "
                                             f"not on {section.address}")
    if len(set(value)) != len(value):
        raise ConfigError(source, where, f"a name appears twice in {value!r}")
    return tuple(value)
