"""Checking config tables: every key known and valid, else a ConfigError naming file and key.

Shared by the SIP tables ([sip], [limits], [tls], [websocket], [proxy.*], [dns],
[registrar], [auth]); a checker takes a value and returns it parsed, or raises
ValueError saying why.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError, toml_key

Checker = Callable[[Any], Any]


def checked_values(table: dict[str, Any], checkers: dict[str, Checker], source: str, *where: str) -> dict[str, Any]:
    """Every key of `table` known and valid, or a ConfigError naming it."""
    values = {}
    for key, value in table.items():
        if key not in checkers:
            raise ConfigError(source, toml_key(*where, key), "unknown key")
        try:
            values[key] = checkers[key](value)
        except ValueError as why:
            raise ConfigError(source, toml_key(*where, key), str(why)) from None
    return values


def checked_table(table: Any, checkers: dict[str, Checker], source: str, name: str) -> dict[str, Any]:
    """`[name]` is a table, and checked_values of it."""
    if not isinstance(table, dict):
        raise ConfigError(source, name, f"expected a table [{name}]")
    return checked_values(table, checkers, source, name)


def integer_at_least(minimum: int) -> Callable[[Any], int]:
    """A checker: an integer (not a bool) >= `minimum`."""
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {value!r}")
        return value
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value
