"""The embedded store: one SQLite file in WAL mode, shared by the workers of one node.

The stdlib `sqlite3` runs in one thread of this process (docs/registrar.md
has the measurement that chose it over aiosqlite): a query never blocks the
reactor, also while another worker holds the write lock (busy_timeout).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .base import SCHEMA, StoreError
from .sql import SqlStore, Statement

BUSY_TIMEOUT_MS = 2000


class SqliteStore(SqlStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = url[len("sqlite://"):]
        self._owner: int | None = None      # the process whose thread and connection these are
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None   # the thread's: writes, and reads that would wait
        self._reader: sqlite3.Connection | None = None       # the reactor's: reads only

    async def run(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        self._this_process()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_here, statements)

    async def read(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        """A read runs here, in the reactor: in WAL mode a reader waits for no writer, and the hop to the
        store's thread cost 4x the query (docs/registrar.md).  A reader that would wait after all
        (a checkpoint, a new file without its tables) does not: that read goes to the thread."""
        self._this_process()
        try:
            reader = self._reader or self._open_reader()
            rows: list[Any] = []
            for sql, params in statements:
                rows = reader.execute(sql, params).fetchall()
            return rows
        except sqlite3.Error:
            return await self.run(statements)

    def _this_process(self) -> None:
        if self._owner != os.getpid():   # a fresh worker (or the CLI): its own thread and connections
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite store")
            self._connection = self._reader = None
            self._owner = os.getpid()

    def _open_reader(self) -> sqlite3.Connection:
        if not os.path.exists(self.path):
            raise sqlite3.OperationalError("no store file yet")   # the thread's connection makes it
        # timeout 0: never wait on a lock in the reactor; autocommit: no transaction left open.
        uri = Path(self.path).resolve().as_uri() + "?mode=ro"
        reader = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
        self._reader = reader
        return reader

    def _run_here(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        try:
            connection = self._connection or self._connect()
            with connection:
                rows: list[Any] = []
                for sql, params in statements:
                    rows = connection.execute(sql, params).fetchall()
                return rows
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: {error}") from None

    def _connect(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        with connection:
            for statement in SCHEMA:
                connection.execute(statement)
        self._connection = connection
        return connection
