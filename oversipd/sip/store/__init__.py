"""The location and user store (SIP.md §14): one interface, two backends (SQLite, PostgreSQL).

Sits beside the SIP layers, below the registrar and authentication that use
it: it knows bindings and users as rows, not SIP.  `open_store(url)` gives
the same Store for one URL (the registrar and [auth] may share a file); a
backend opens its connection in the worker that first uses it (a connection
never crosses the fork).  Every failure to reach the store is a StoreError:
the caller answers 503 with Retry-After and the worker serves on.
"""

from __future__ import annotations

from .base import SCHEMA, Binding, Store, StoreError, decode_ha1, encode_ha1

__all__ = ["Binding", "Store", "StoreError", "open_store", "SCHEMA", "encode_ha1", "decode_ha1"]

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

