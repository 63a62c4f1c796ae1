"""`[listen.NAME]` sections: listening addresses parsed into frozen dataclasses (SPEC §7)."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, toml_key

DEFAULT_BACKLOG = 1024
MAX_BACKLOG = 65535
# systemd's FileDescriptorName= allows at most 255 characters and no ':'
# (the separator of LISTEN_FDNAMES); staying within this set keeps every
# section name usable as a socket-activation name.
SECTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
# sockaddr_un.sun_path is 108 bytes, one of them the terminating NUL.
MAX_UNIX_PATH = 107
SCHEMES = ("tcp", "udp", "unix", "tls", "ws", "wss")
# tls, ws and wss listen on TCP sockets like tcp (SIP.md §12).
STREAM_SCHEMES = ("tcp", "tls", "ws", "wss")
LISTEN_KEYS = ("address", "backlog")


@dataclass(frozen=True)
class ListenSettings:
    """One `[listen.NAME]` section, validated."""

    name: str
    address: str              # as written, for messages
    scheme: str               # "tcp", "udp", "unix", "tls", "ws" or "wss"
    host: str = ""            # IP literal (tcp/udp)
    port: int = 0
    path: str = ""            # unix
    backlog: int = DEFAULT_BACKLOG

    @property
    def family(self) -> int:
        if self.scheme == "unix":
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def type(self) -> int:
        return socket.SOCK_DGRAM if self.scheme == "udp" else socket.SOCK_STREAM

    @property
    def sockaddr(self) -> str | tuple[str, int]:
        return self.path if self.scheme == "unix" else (self.host, self.port)


def parse_address(text: Any) -> dict[str, Any]:
    """`tcp|udp|tls|ws|wss://HOST:PORT` or `unix:///PATH` -> fields; ValueError(why) otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string such as \"tcp://127.0.0.1:8060\", got {text!r}")
    scheme, separator, rest = text.partition("://")
    if not separator or scheme not in SCHEMES:
        raise ValueError(f"{text!r}: expected tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH "
                         "(or tls://, ws://, wss:// HOST:PORT)")
    if scheme == "unix":
        return {"scheme": scheme, "path": _unix_path(text, rest)}
    host, port = _host_and_port(text, rest)
    return {"scheme": scheme, "host": host, "port": port}


def _unix_path(text: str, path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{text!r}: a unix socket needs an absolute path, as in unix:///run/oversipd.sock")
    if "\x00" in path:
        raise ValueError(f"{text!r}: a NUL character is not allowed")
    if len(path.encode()) > MAX_UNIX_PATH:
        raise ValueError(f"{text!r}: the path is longer than {MAX_UNIX_PATH} bytes")
    return path


def _host_and_port(text: str, rest: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, bracket, port_part = rest[1:].partition("]")
        if not bracket or not port_part.startswith(":"):
            raise ValueError(f"{text!r}: expected an IPv6 address as [ADDRESS]:PORT")
        port_text = port_part[1:]
        version = 6
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"{text!r}: expected HOST:PORT (an IPv6 address goes in brackets: [::1]:PORT)")
        version = 4
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (host names are not resolved)") from None
    if address.version != version:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets: [{host}]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return str(address), int(port_text)


def _backlog(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BACKLOG:
        raise ValueError(f"expected an integer from 1 to {MAX_BACKLOG}, got {value!r}")
    return value


def parse_listen_section(name: str, table: Any, source: str) -> ListenSettings:
    """One `[listen.NAME]` table -> ListenSettings; every mistake names file and key."""
    where = toml_key("listen", name)
    if not SECTION_NAME.fullmatch(name):
        raise ConfigError(source, where, "a section name may use letters, digits, '_', '.' and '-' "
                                         "(at most 255 characters)")
    if not isinstance(table, dict):
        raise ConfigError(source, where, "expected a table [listen.NAME]")
    for key in table:
        if key not in LISTEN_KEYS:
            raise ConfigError(source, toml_key("listen", name, key), "unknown key")
    if "address" not in table:
        raise ConfigError(source, f"{where}.address", "missing (e.g. address = \"tcp://127.0.0.1:8060\")")
    try:
        fields = parse_address(table["address"])
    except ValueError as why:
        raise ConfigError(source, f"{where}.address", str(why)) from None
    if "backlog" in table:
        if fields["scheme"] == "udp":
            raise ConfigError(source, f"{where}.backlog", "a udp socket has no backlog")
        try:
            fields["backlog"] = _backlog(table["backlog"])
        except ValueError as why:
            raise ConfigError(source, f"{where}.backlog", str(why)) from None
    return ListenSettings(name=name, address=table["address"], **fields)


def parse_listen_tables(tables: dict[str, Any], source: str) -> dict[str, ListenSettings]:
    """The whole `[listen]` table: NAME -> ListenSettings."""
    return {name: parse_listen_section(name, table, source) for name, table in tables.items()}
