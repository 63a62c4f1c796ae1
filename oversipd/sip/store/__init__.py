"""The location and user store (SIP.md §14): one interface, two backends (SQLite, PostgreSQL).

Sits beside the SIP layers, below the registrar and authentication that use
it: it knows bindings and users as rows, not SIP.  `open_store(url)` gives
the same Store for one URL (the registrar and [auth] may share a file); a
backend opens its connection in the worker that first uses it (a connection
never crosses the fork).  Every failure to reach the store is a StoreError:
the caller answers 503 with Retry-After and the worker serves on.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .base import SCHEMA, Binding, Store, StoreError, decode_ha1, encode_ha1

__all__ = ["Binding", "Store", "StoreError", "open_store", "SCHEMA", "encode_ha1", "decode_ha1", "StoreSettings"]

T = TypeVar("T")

_stores: dict[str, Store] = {}


def open_store(url: str) -> Store:
    """The Store of a `store = ` URL (already made absolute by the settings); one per URL and process."""
    store = _stores.get(url)
    if store is None:
        if url.startswith("sqlite:"):
            from .sqlite import SqliteStore
            store = SqliteStore(url)
        else:
            from .postgresql import PostgresqlStore
            store = PostgresqlStore(url)
        _stores[url] = store
    return store



class StoreSettings(Generic[T]):
    """A service's table ([registrar], [auth]) as configured, and the store it names."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.settings: T | None = None

    def configure(self, settings: T | None) -> None:
        self.settings = settings
        if settings is not None:
            open_store(_url_of(settings))   # a PostgreSQL store declares its per-worker pool now (master)

    def get(self) -> T:
        if self.settings is None:
            raise RuntimeError(f"no [{self.table}] table in the configuration")
        return self.settings

    def store(self) -> Store:
        return open_store(_url_of(self.get()))


def _url_of(settings: Any) -> str:
    return settings.store
