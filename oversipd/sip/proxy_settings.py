"""`[proxy.NAME]` and `[dns]` tables (SIP.md §10): parsed into frozen dataclasses, mistakes a ConfigError."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError, toml_key
from .checks import boolean, checked_values

# The transports a [proxy.NAME] may prefer: the SIP listeners speak these.
PROXY_TRANSPORTS = ("udp", "tcp", "tls")
DNS_PORT = 53
# Same rule as [listen.NAME]: a name that stays readable in logs and messages.
PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")


@dataclass(frozen=True)
class DnsSettings:
    """`[dns]`: where RFC 3263 queries go."""

    nameservers: tuple[tuple[str, int], ...] = ()   # (ip, port); () = /etc/resolv.conf
    timeout: float = 2.0                             # seconds to wait for one nameserver


@dataclass(frozen=True)
class ProxySettings:
    """One `[proxy.NAME]` profile; the values are SIP.md's defaults."""

    name: str = ""
    do_record_routing: bool = True
    use_dns: bool = True
    use_naptr: bool = True
    use_srv: bool = True
    transport_preference: tuple[str, ...] = ("tcp", "udp")
    dns_cache_time: float = 300.0
    dns_failover_on_503: bool = True
    timer_B: float = 32.0
    timer_C: float = 120.0
    timer_F: float = 32.0
    callback_on_server_tls_handshake: bool = False   # SipEvents.on_server_tls_handshake (SIP.md §12)


# --- value checkers: each returns the parsed value or raises ValueError(why)

def _seconds(minimum: float, *, inclusive: bool) -> Callable[[Any], float]:
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number of seconds {bound}, got {value!r}")
        below = value < minimum if inclusive else value <= minimum
        if value != value or below or value == float("inf"):
            raise ValueError(f"expected a number of seconds {bound}, got {value!r}")
        return float(value)
    return check


def _transport_preference(value: Any) -> tuple[str, ...]:
    allowed = ", ".join(f'"{t}"' for t in PROXY_TRANSPORTS)
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of {allowed}, got {value!r}")
    for item in value:
        if not isinstance(item, str) or item.lower() not in PROXY_TRANSPORTS:
            raise ValueError(f"{item!r} is not a transport; expected {allowed}")
    preference = tuple(item.lower() for item in value)
    if len(set(preference)) != len(preference):
        raise ValueError(f"a transport is listed twice: {value!r}")
    return preference


def parse_nameserver(text: Any) -> tuple[str, int]:
    """`IP`, `IP:PORT`, `IPV6` or `[IPV6]:PORT` -> (ip, port); ValueError(why) otherwise."""
    if not isinstance(text, str):
        raise ValueError(f'expected a string "IP" or "IP:PORT", got {text!r}')
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
        port = _nameserver_port(text, rest[1:]) if rest else DNS_PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _nameserver_port(text, port_text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return str(address), port


def _nameserver_port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return int(port_text)


def _nameservers(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise ValueError(f'expected a list such as ["127.0.0.1", "10.0.0.2:5353"], got {value!r}')
    return tuple(parse_nameserver(item) for item in value)


DNS_KEYS: dict[str, Callable[[Any], Any]] = {
    "nameservers": _nameservers,
    "timeout": _seconds(0, inclusive=False),
}

PROXY_KEYS: dict[str, Callable[[Any], Any]] = {
    "do_record_routing": boolean,
    "use_dns": boolean,
    "use_naptr": boolean,
    "use_srv": boolean,
    "transport_preference": _transport_preference,
    "dns_cache_time": _seconds(0, inclusive=True),
    "dns_failover_on_503": boolean,
    "timer_B": _seconds(0, inclusive=False),
    "timer_C": _seconds(0, inclusive=False),
    "timer_F": _seconds(0, inclusive=False),
    "callback_on_server_tls_handshake": boolean,
}


def parse_dns_table(table: dict[str, Any], source: str) -> DnsSettings:
    """The `[dns]` table (absent = defaults)."""
    return DnsSettings(**checked_values(table, DNS_KEYS, source, "dns"))


def parse_proxy_section(name: str, table: Any, source: str) -> ProxySettings:
    """One `[proxy.NAME]` table -> ProxySettings."""
    if not PROFILE_NAME.fullmatch(name):
        raise ConfigError(source, toml_key("proxy", name),
                          "a profile name may use letters, digits, '_', '.' and '-' (at most 255 characters)")
    if not isinstance(table, dict):
        raise ConfigError(source, toml_key("proxy", name), "expected a table [proxy.NAME]")
    return ProxySettings(name=name, **checked_values(table, PROXY_KEYS, source, "proxy", name))


def parse_proxy_tables(tables: dict[str, Any], source: str) -> dict[str, ProxySettings]:
    """The whole `[proxy]` table: NAME -> ProxySettings."""
    return {name: parse_proxy_section(name, table, source) for name, table in tables.items()}
