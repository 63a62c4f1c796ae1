"""`[registrar]` and `[auth]` tables (SIP.md §14): parsed into frozen dataclasses, mistakes a ConfigError."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, toml_key
from .checks import checked_table, integer_at_least
from .settings import _host

STORE_SCHEMES = ("sqlite", "postgresql", "postgres")
DIGEST_ALGORITHMS = ("SHA-256", "MD5")
DEFAULT_STORE = "sqlite:///var/lib/oversipd/location.db"


@dataclass(frozen=True)
class RegistrarSettings:
    store: str = DEFAULT_STORE
    domains: tuple[str, ...] = ()      # () = [sip] local_domains + advertised_host
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10


@dataclass(frozen=True)
class AuthSettings:
    realm: str = "oversipd"
    store: str = DEFAULT_STORE
    algorithms: tuple[str, ...] = DIGEST_ALGORITHMS
    nonce_lifetime: int = 300


def store_url(value: Any, base: Path) -> str:
    """sqlite:///abs/path, sqlite:relative/path (to the file) or postgresql://...; the path made absolute."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f'expected "sqlite:///PATH" or "postgresql://...", got {value!r}')
    scheme, _, rest = value.partition(":")
    if scheme not in STORE_SCHEMES:
        raise ValueError(f"unknown store {scheme!r}: sqlite or postgresql")
    if scheme != "sqlite":
        return value
    path = rest[2:] if rest.startswith("//") else rest
    if not path or path == "/":
        raise ValueError(f"no file in {value!r}")
    return "sqlite://" + os.path.normpath(base / path)


def _domains(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of domains, got {value!r}")
    return tuple(_host(item) for item in value)


def _realm(value: Any) -> str:
    if not isinstance(value, str) or not value or '"' in value or "\\" in value or not value.isprintable():
        raise ValueError(f"expected a non-empty printable string without quotes, got {value!r}")
    return value


def _algorithms(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(set(value)) != len(value) \
            or any(item not in DIGEST_ALGORITHMS for item in value):
        raise ValueError(f"expected a non-empty list of {list(DIGEST_ALGORITHMS)}, got {value!r}")
    return tuple(value)


def _parse(table: Any, name: str, keys: dict[str, Callable[[Any], Any]], source: str,
           base: Path) -> dict[str, Any]:
    return checked_table(table, {**keys, "store": lambda value: store_url(value, base)}, source, name)


REGISTRAR_KEYS: dict[str, Callable[[Any], Any]] = {
    "domains": _domains, "min_expires": integer_at_least(1), "max_expires": integer_at_least(1),
    "default_expires": integer_at_least(1), "max_contacts": integer_at_least(1),
}
AUTH_KEYS: dict[str, Callable[[Any], Any]] = {
    "realm": _realm, "algorithms": _algorithms, "nonce_lifetime": integer_at_least(1),
}


def parse_registrar_table(table: Any, source: str) -> RegistrarSettings:
    values = _parse(table, "registrar", REGISTRAR_KEYS, source, Path(source).parent)
    settings = RegistrarSettings(**values)
    if not settings.min_expires <= settings.default_expires <= settings.max_expires:
        key = next((k for k in ("default_expires", "max_expires", "min_expires") if k in values), "min_expires")
        raise ConfigError(source, toml_key("registrar", key),
                          "expected min_expires <= default_expires <= max_expires")
    return settings


def parse_auth_table(table: Any, source: str) -> AuthSettings:
    return AuthSettings(**_parse(table, "auth", AUTH_KEYS, source, Path(source).parent))
