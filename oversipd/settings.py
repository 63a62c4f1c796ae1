"""oversipd.conf: parsed once into frozen dataclasses, every mistake a ConfigError."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .addresses import ListenSettings, parse_listen_tables
from .errors import ConfigError, toml_key

if TYPE_CHECKING:
    from .sip.proxy_settings import DnsSettings, ProxySettings
    from .sip.registrar_settings import AuthSettings, RegistrarSettings
    from .sip.settings import SipSettings

LOG_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")
SYSLOG_FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news",
    "syslog", "user", "uucp", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
)
MAX_WORKERS = 1024
DEFAULT_CONF_PATH = "/etc/oversipd/oversipd.conf"
CONF_ENV = "OVERSIPD_CONF"


@dataclass(frozen=True)
class CoreSettings:
    workers: int = 1
    modules_dir: Path | None = None
    server_script: Path | None = None
    pid_file: Path | None = None
    user: str = ""
    group: str = ""
    log_level: str = "info"
    syslog_facility: str = "daemon"
    graceful_timeout: float = 10.0
    worker_timeout: float = 30.0
    respawn_limit: int = 10


@dataclass(frozen=True)
class Overrides:
    """Command-line options that win over the file, also across reloads."""

    workers: int | None = None
    modules_dir: str | None = None
    pid_file: str | None = None
    log_level: str | None = None


@dataclass(frozen=True)
class Settings:
    path: Path
    core: CoreSettings
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    # `workers` as the file says it (before -w): a reload changes the
    # worker count only when this value changed (SPEC §5).
    workers_in_file: int = 1
    # [listen.NAME] sections (SPEC §7); bound once, at start.
    listen: dict[str, ListenSettings] = field(default_factory=dict)
    # The [sip] table (SIP.md §8); None: no SIP at all.
    sip: "SipSettings | None" = None
    # [dns] and [proxy.NAME] (SIP.md §10), read by the proxy; None: no [dns] table (its defaults).
    dns: "DnsSettings | None" = None
    proxies: "dict[str, ProxySettings]" = field(default_factory=dict)
    # [registrar] and [auth] (SIP.md §14); None: no such table.
    registrar: "RegistrarSettings | None" = None
    auth: "AuthSettings | None" = None

    def module_settings(self, name: str) -> dict[str, Any]:
        return dict(self.modules.get(name, {}))


def default_conf_path() -> str:
    return os.environ.get(CONF_ENV) or DEFAULT_CONF_PATH


# --- value checkers: each returns the parsed value or raises ValueError(why)

def _number(minimum: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number >= {minimum:g}, got {value!r}")
        if value != value or value < minimum or value == float("inf"):
            raise ValueError(f"expected a number >= {minimum:g}, got {value!r}")
        return float(value)
    return check


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer {bounds}, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"expected an integer {bounds}, got {value!r}")
        return value
    return check


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}; got {value!r}")
        return value.lower()
    return check


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if "\x00" in value:
        raise ValueError("a NUL character is not allowed")
    return value


def _workers(value: Any) -> int:
    if value == "auto":
        return min(os.cpu_count() or 1, MAX_WORKERS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(f'expected an integer from 1 to {MAX_WORKERS} or "auto", got {value!r}')
    return value


CORE_KEYS: dict[str, Callable[[Any], Any]] = {
    "workers": _workers,
    "modules_dir": _string,
    "server_script": _string,
    "pid_file": _string,
    "user": _string,
    "group": _string,
    "log_level": _choice(LOG_LEVELS),
    "syslog_facility": _choice(SYSLOG_FACILITIES),
    "graceful_timeout": _number(0),
    "worker_timeout": _number(0),
    "respawn_limit": _integer(0),
}
DEFAULT_MODULES_DIR = "modules.d"
DEFAULT_SERVER_SCRIPT = "server.py"


def load_settings(path: str | os.PathLike[str], overrides: Overrides = Overrides()) -> Settings:
    """Read, validate and resolve a configuration file."""
    conf_path = Path(os.path.abspath(path))
    document = _read_toml(conf_path)
    source = str(conf_path)
    core_table = _table(document, "core", source)
    modules_table = _table(document, "modules", source)
    listen = parse_listen_tables(_table(document, "listen", source), source)
    sip = _sip_table(document, listen, source)
    dns, proxies = _proxy_tables(document, source)
    registrar, auth = _registrar_tables(document, source)
    for name in document:
        if name not in ("core", "modules", "listen", "sip", "limits", "dns", "proxy", "registrar", "auth", "tls",
                        "websocket"):
            raise ConfigError(source, toml_key(name), "unknown table or key")

    raw: dict[str, Any] = {}
    for key, value in core_table.items():
        if key not in CORE_KEYS:
            raise ConfigError(source, toml_key("core", key), "unknown key")
        try:
            raw[key] = CORE_KEYS[key](value)
        except ValueError as why:
            raise ConfigError(source, f"core.{key}", str(why)) from None

    modules: dict[str, dict[str, Any]] = {}
    for name, table in modules_table.items():
        if not isinstance(table, dict):
            raise ConfigError(source, toml_key("modules", name), "expected a table [modules.NAME]")
        modules[name] = table

    workers_in_file = raw.get("workers", CoreSettings.workers)
    from_command_line = _apply_overrides(raw, overrides)
    base = conf_path.parent

    def where(key: str) -> tuple[str, str | None]:
        if key in from_command_line:
            return "--" + key.replace("_", "-"), None
        return source, f"core.{key}"

    core = CoreSettings(
        workers=raw.get("workers", CoreSettings.workers),
        modules_dir=_existing_path(base, raw, "modules_dir", DEFAULT_MODULES_DIR, where, is_dir=True),
        server_script=_existing_path(base, raw, "server_script", DEFAULT_SERVER_SCRIPT, where, is_dir=False),
        pid_file=_optional_path(base, raw.get("pid_file", "")),
        **{k: raw[k] for k in ("user", "group", "log_level", "syslog_facility",
                               "graceful_timeout", "worker_timeout", "respawn_limit") if k in raw},
    )
    return Settings(path=conf_path, core=core, modules=modules, workers_in_file=workers_in_file,
                    listen=listen, sip=sip, dns=dns, proxies=proxies, registrar=registrar, auth=auth)


# The SIP package costs start-up time: imported only for a configuration that speaks SIP.

def _sip_table(document: dict[str, Any], listen: dict[str, ListenSettings], source: str) -> "SipSettings | None":
    if "sip" not in document and "limits" not in document:
        return None
    from .sip.settings import LimitSettings, parse_limits_table, parse_sip_table
    # [limits] is checked even without [sip]: a mistake there is reported, not ignored.
    limits = parse_limits_table(document["limits"], source) if "limits" in document else LimitSettings()
    if "sip" not in document:
        return None
    return parse_sip_table(document["sip"], listen, source, limits, document.get("tls"), document.get("websocket"))


def _proxy_tables(document: dict[str, Any], source: str) -> "tuple[DnsSettings | None, dict[str, ProxySettings]]":
    if "dns" not in document and "proxy" not in document:
        return None, {}
    from .sip.proxy_settings import parse_dns_table, parse_proxy_tables
    return (parse_dns_table(_table(document, "dns", source), source),
            parse_proxy_tables(_table(document, "proxy", source), source))


def _registrar_tables(document: dict[str, Any], source: str) -> "tuple[RegistrarSettings | None, AuthSettings | None]":
    if "registrar" not in document and "auth" not in document:
        return None, None
    from .sip.registrar_settings import parse_auth_table, parse_registrar_table
    return (parse_registrar_table(document["registrar"], source) if "registrar" in document else None,
            parse_auth_table(document["auth"], source) if "auth" in document else None)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(str(path), None, "configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(str(path), None, "is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(str(path), None, "permission denied") from None
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), None, f"not UTF-8 text ({error.reason})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), None, f"invalid TOML: {error}") from None


def _table(document: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(source, name, "expected a table")
    return table


def _apply_overrides(raw: dict[str, Any], overrides: Overrides) -> set[str]:
    """Put the command-line values into `raw`; return the keys they set."""
    applied = set()
    option_names = {"workers": "--workers", "modules_dir": "--modules-dir",
                    "pid_file": "--pid-file", "log_level": "--log-level"}
    for key, option in option_names.items():
        value = getattr(overrides, key)
        if value is None:
            continue
        try:
            raw[key] = CORE_KEYS[key](value)
        except ValueError as why:
            raise ConfigError(option, None, str(why)) from None
        applied.add(key)
    return applied


def _existing_path(base: Path, raw: dict[str, Any], key: str, default: str,
                   where: Callable[[str], tuple[str, str | None]], is_dir: bool) -> Path | None:
    """Resolve a path key: the default may be absent, an explicit one must exist."""
    explicit = key in raw
    value = raw.get(key, default)
    if value == "" and explicit:
        return None  # set to "" on purpose: none
    path = base / value
    exists = path.is_dir() if is_dir else path.is_file()
    if exists:
        return path
    if not explicit:
        return None
    kind = "directory" if is_dir else "file"
    raise ConfigError(*where(key), f"{kind} {str(path)!r} does not exist")


def _optional_path(base: Path, value: str) -> Path | None:
    return base / value if value else None
