"""The `[tls]` and `[websocket]` tables (SIP.md §12), validated into frozen dataclasses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, toml_key
from .checks import boolean, checked_table

VERIFY_CLIENT = ("none", "optional", "required")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
MAX_WS_MESSAGE_SIZE = 4 * 1024 * 1024
# What needs a certificate of ours: a listener that does the server side of TLS.
SECURE_SCHEMES = ("tls", "wss")


@dataclass(frozen=True)
class TlsSettings:
    certificate: str = ""          # absolute paths once resolved; "" = none (outgoing TLS only)
    private_key: str = ""
    ca_file: str = ""              # "" = the system store
    verify_client: str = "optional"
    verify_server: bool = True
    minimum_version: str = "TLSv1.2"
    handshake_timeout: float = 4.0


@dataclass(frozen=True)
class WebSocketSettings:
    max_message_size: int = 65535
    allowed_origins: tuple[str, ...] = ()
    ping_interval: float = 30.0     # 0 = no pings
    pong_timeout: float = 10.0


def _file(base: Path) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a file name, got {value!r}")
        if value == "":
            return ""
        path = (base / value).resolve()
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as error:
            raise ValueError(f"{path}: {error.strerror or error}") from None
        return str(path)
    return check


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value
    return check


def _seconds(minimum: float, zero_allowed: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not (minimum < value < float("inf") or (zero_allowed and value == 0)):
            more = " (or 0)" if zero_allowed else ""
            raise ValueError(f"expected a number of seconds > {minimum:g}{more}, got {value!r}")
        return float(value)
    return check


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= MAX_WS_MESSAGE_SIZE:
        raise ValueError(f"expected an integer from 1024 to {MAX_WS_MESSAGE_SIZE}, got {value!r}")
    return value


def _origins(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"expected a list of Origin strings, got {value!r}")
    return tuple(value)


def parse_tls_table(table: Any, source: str, needs_certificate: bool) -> TlsSettings:
    """`[tls]` -> TlsSettings; a tls/wss listener needs a readable certificate and key."""
    base = Path(os.path.dirname(source))
    checks: dict[str, Callable[[Any], Any]] = {
        "certificate": _file(base), "private_key": _file(base), "ca_file": _file(base),
        "verify_client": _choice(VERIFY_CLIENT), "verify_server": boolean,
        "minimum_version": _choice(TLS_VERSIONS), "handshake_timeout": _seconds(0.0),
    }
    settings = TlsSettings(**checked_table(table, checks, source, "tls"))
    if needs_certificate:
        for key in ("certificate", "private_key"):
            if not getattr(settings, key):
                raise ConfigError(source, toml_key("tls", key), "missing: a tls or wss listener needs it")
        _check_pair(settings, source)
    return settings


def _check_pair(settings: TlsSettings, source: str) -> None:
    """The certificate and key load together (a mismatch would only show at the first handshake)."""
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.certificate, settings.private_key)
    except ssl.SSLError as error:
        raise ConfigError(source, "tls.private_key",
                          f"{settings.certificate} and {settings.private_key} do not load as a pair: "
                          f"{error.reason or error}") from None
    if settings.ca_file:
        try:
            context.load_verify_locations(settings.ca_file)
        except ssl.SSLError as error:
            raise ConfigError(source, "tls.ca_file", f"{settings.ca_file}: {error.reason or error}") from None


def parse_websocket_table(table: Any, source: str) -> WebSocketSettings:
    checks: dict[str, Callable[[Any], Any]] = {
        "max_message_size": _size, "allowed_origins": _origins,
        "ping_interval": _seconds(0.0, zero_allowed=True), "pong_timeout": _seconds(0.0),
    }
    return WebSocketSettings(**checked_table(table, checks, source, "websocket"))
