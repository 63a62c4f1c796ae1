"""The SQL both backends run: a backend gives `run(statements)`, a list of (sql, params) in one transaction."""

from __future__ import annotations

from typing import Any

from .base import Binding, decode_ha1, encode_ha1

Statement = tuple[str, tuple[Any, ...]]

UPSERT_BINDING = (
    "INSERT INTO bindings (aor, key, contact, expires, call_id, cseq, path, instance, reg_id, q) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (aor, key) DO UPDATE SET contact = excluded.contact, "
    "expires = excluded.expires, call_id = excluded.call_id, cseq = excluded.cseq, path = excluded.path, "
    "instance = excluded.instance, reg_id = excluded.reg_id, q = excluded.q")


class SqlStore:
    """The Store interface on top of one abstract `run`; `?` placeholders (a backend may rewrite them)."""

    url: str

    async def run(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        """Run the statements in one transaction; the rows of the last one."""
        raise NotImplementedError

    async def read(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        """Statements that only read: a backend may run them a cheaper way (SQLite: in the reactor)."""
        return await self.run(statements)

    async def bindings(self, aor: str, now: float) -> list[Binding]:
        # One read; the DELETE only when an expired binding was read: a DELETE on every
        # lookup took SQLite's write lock (and PostgreSQL a round trip) for nothing.
        rows = await self.read([
            ("SELECT aor, key, contact, expires, call_id, cseq, path, instance, reg_id, q FROM bindings "
             "WHERE aor = ? ORDER BY q DESC, expires DESC", (aor,)),
        ])
        bindings = [Binding.from_row(tuple(row)) for row in rows]
        live = [binding for binding in bindings if binding.expires > now]
        if len(live) < len(bindings):
            await self.run([("DELETE FROM bindings WHERE aor = ? AND expires <= ?", (aor, now))])
        return live

    async def put(self, binding: Binding) -> None:
        await self.run([(UPSERT_BINDING, binding.row())])

    async def remove(self, aor: str, key: str) -> None:
        await self.run([("DELETE FROM bindings WHERE aor = ? AND key = ?", (aor, key))])

    async def user(self, realm: str, name: str) -> dict[str, str] | None:
        rows = await self.read([("SELECT ha1 FROM users WHERE realm = ? AND name = ?", (realm, name))])
        return decode_ha1(rows[0][0]) if rows else None

    async def put_user(self, realm: str, name: str, ha1: dict[str, str]) -> None:
        await self.run([("INSERT INTO users (realm, name, ha1) VALUES (?, ?, ?) "
                         "ON CONFLICT (realm, name) DO UPDATE SET ha1 = excluded.ha1",
                         (realm, name, encode_ha1(ha1)))])

    async def delete_user(self, realm: str, name: str) -> bool:
        rows = await self.run([("DELETE FROM users WHERE realm = ? AND name = ? RETURNING name", (realm, name))])
        return bool(rows)

    async def users(self, realm: str) -> list[str]:
        rows = await self.run([("SELECT name FROM users WHERE realm = ? ORDER BY name", (realm,))])
        return [row[0] for row in rows]

    async def secret(self, name: str, new_value: str) -> str:
        rows = await self.run([
            ("INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, new_value)),
            ("SELECT value FROM secrets WHERE name = ?", (name,)),
        ])
        return rows[0][0]
