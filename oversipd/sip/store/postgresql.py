"""The shared store: PostgreSQL through a psycopg pool per worker (oversipd.worker_resource).

Several nodes on one database see the same bindings and users, and derive
their nonce key from the same secret row.  The pool is declared in the
master (configuration time) and opened by each worker before it serves;
the CLI (`oversipd user`) opens a connection of its own.
"""

from __future__ import annotations

import os
from typing import Any

from ... import process
from ...resources import WorkerResource, worker_label, worker_resource
from .base import SCHEMA, StoreError
from .sql import SqlStore, Statement

POOL_SIZE = 2
CONNECT_TIMEOUT = 2.0   # seconds a request waits for a connection before its 503


class PostgresqlStore(SqlStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo = "postgresql:" + url.partition(":")[2]
        self.pool: WorkerResource[Any] | None = None
        self._schema_pid: int | None = None
        if process.role == "master":
            # Imported before the fork: each worker would pay the import (0.4 s
            # of CPU, 2 s and more when several start at once on a loaded
            # machine) inside its start, under worker_timeout's watch.
            import psycopg_pool  # noqa: F401
            self.pool = worker_resource(f"location store {_safe(url)}", open=self._open_pool,
                                        close=lambda pool: pool.close())

    async def _open_pool(self) -> Any:
        from psycopg_pool import AsyncConnectionPool
        pool = AsyncConnectionPool(self.conninfo, min_size=1, max_size=POOL_SIZE, open=False,
                                   kwargs={"application_name": worker_label(), "autocommit": True},
                                   timeout=CONNECT_TIMEOUT)
        await pool.open()   # connections come as the store is used: a database that is down costs 503s, not the worker
        return pool

    async def run(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        if self._schema_pid != os.getpid():   # the tables, created on first use (once per process)
            await self._run([(sql, ()) for sql in SCHEMA])
            self._schema_pid = os.getpid()
        return await self._run(statements)

    async def _run(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        import psycopg
        try:
            if self.pool is not None and self.pool.is_open:
                async with self.pool.get().connection() as connection:
                    return await _run_on(connection, statements)
            async with await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=int(CONNECT_TIMEOUT),
                                                             autocommit=True) \
                    as connection:   # the CLI, or a process without the pool
                return await _run_on(connection, statements)
        except (psycopg.Error, OSError) as error:
            raise StoreError(f"{_safe(self.url)}: {str(error).strip().splitlines()[0] if str(error) else error!r}") \
                from None
        except Exception as error:   # the pool's own timeout
            if type(error).__module__.startswith("psycopg_pool"):
                raise StoreError(f"{_safe(self.url)}: {error}") from None
            raise


async def _run_on(connection: Any, statements: list[Statement]) -> list[tuple[Any, ...]]:
    """The statements on an autocommit connection: one alone is its own transaction (one round
    trip, where BEGIN and COMMIT would make three); several run between BEGIN and COMMIT."""
    if len(statements) == 1:
        return await _execute(connection, statements)
    async with connection.transaction():
        return await _execute(connection, statements)


async def _execute(connection: Any, statements: list[Statement]) -> list[tuple[Any, ...]]:
    rows: list[Any] = []
    async with connection.cursor() as cursor:
        for sql, params in statements:
            await cursor.execute(sql.replace("?", "%s"), params)
            rows = await cursor.fetchall() if cursor.description else []
    return rows


def _safe(url: str) -> str:
    """The URL without its password, for log lines."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.partition(':')[0]}@{host}" if at else url
