"""What the store keeps, as rows: a binding, the schema, the errors, the interface (store/__init__.py says more)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

# Plain SQL both backends accept (placeholders are the backend's).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bindings (aor TEXT NOT NULL, key TEXT NOT NULL, contact TEXT NOT NULL, "
    "expires DOUBLE PRECISION NOT NULL, call_id TEXT NOT NULL, cseq BIGINT NOT NULL, path TEXT NOT NULL, "
    "instance TEXT NOT NULL, reg_id BIGINT NOT NULL, q DOUBLE PRECISION NOT NULL, PRIMARY KEY (aor, key))",
    "CREATE TABLE IF NOT EXISTS users (realm TEXT NOT NULL, name TEXT NOT NULL, ha1 TEXT NOT NULL, "
    "PRIMARY KEY (realm, name))",
    "CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class StoreError(Exception):
    """The store cannot be reached or used; the message says why."""


@dataclass(frozen=True)
class Binding:
    """One contact of an address of record (RFC 3261 §10.3), as the registrar keeps it."""

    aor: str
    key: str                     # what a later REGISTER names it by: the contact URI, or instance + reg-id
    contact: str                 # the Contact URI
    expires: float               # epoch seconds
    call_id: str
    cseq: int
    path: tuple[str, ...] = ()   # Route set toward the contact (RFC 3327), ours with a flow token first
    instance: str = ""           # +sip.instance (RFC 5626)
    reg_id: int = 0
    q: float = 1.0

    def row(self) -> tuple:
        return (self.aor, self.key, self.contact, self.expires, self.call_id, self.cseq,
                json.dumps(list(self.path)), self.instance, self.reg_id, self.q)

    @classmethod
    def from_row(cls, row: tuple) -> "Binding":
        aor, key, contact, expires, call_id, cseq, path, instance, reg_id, q = row
        return cls(aor, key, contact, float(expires), call_id, int(cseq), tuple(json.loads(path)),
                   instance, int(reg_id), float(q))


class Store(Protocol):
    url: str

    async def bindings(self, aor: str, now: float) -> list[Binding]:
        """The live bindings of `aor` (the expired ones are deleted on the way)."""

    async def put(self, binding: Binding) -> None: ...

    async def remove(self, aor: str, key: str) -> None: ...

    async def user(self, realm: str, name: str) -> dict[str, str] | None:
        """HA1 per algorithm of a user, or None."""

    async def put_user(self, realm: str, name: str, ha1: dict[str, str]) -> None: ...

    async def delete_user(self, realm: str, name: str) -> bool: ...

    async def users(self, realm: str) -> list[str]: ...

    async def secret(self, name: str, new_value: str) -> str:
        """The value stored under `name`; `new_value` stored first when there is none (every node agrees)."""



def encode_ha1(ha1: dict[str, str]) -> str:
    return json.dumps(ha1, sort_keys=True)


def decode_ha1(text: str) -> dict[str, str]:
    return dict(json.loads(text))
