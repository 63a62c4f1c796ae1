"""The embedded store: one SQLite file in WAL mode, shared by the workers of one node.

The stdlib `sqlite3`, on connections of this process (docs/registrar.md
has the measurement that chose it over aiosqlite).  A query runs in the
reactor when it can do so at once: a read always can in WAL mode, a write
when the write lock is free.  One that would wait (another worker holds the
write lock, a write of ours already waits) runs in the store's one thread,
which waits there (busy_timeout) while the reactor serves on.
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
# The reactor's writer never checkpoints: a checkpoint writes and syncs the
# database file, which may take milliseconds.  The thread does it, passively,
# after this many of the reactor's commits (SQLite's own default interval is
# 1000 pages; a binding's upsert adds one or two).
CHECKPOINT_EVERY = 500


class _WouldWait(Exception):
    """A write the reactor cannot do at once: it goes to the store's thread."""


class SqliteStore(SqlStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = url[len("sqlite://"):]
        self._owner: int | None = None      # the process whose thread and connection these are
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None   # the thread's: what would wait, checkpoints
        self._reader: sqlite3.Connection | None = None       # the reactor's: reads
        self._writer: sqlite3.Connection | None = None       # the reactor's: writes that wait for nothing
        self._in_thread = 0        # writes handed to the thread and not done yet
        self._commits = 0          # the reactor's commits since the last checkpoint was asked for

    async def run(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        """Statements that write, in one transaction: in the reactor when the write lock is free at once
        (12-27 µs, where the hop to the thread costs 74-249: docs/registrar.md), else in the thread.
        While a write of ours waits in the thread, the next ones queue behind it there: the
        store sees a worker's writes in the order it made them."""
        self._this_process()
        if not self._in_thread:
            try:
                return self._write_here(statements)
            except _WouldWait:
                pass
        return await self._in_the_thread(statements)

    async def _in_the_thread(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        self._in_thread += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._run_here, statements)
        finally:
            self._in_thread -= 1

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
            return await self._in_the_thread(statements)

    def _this_process(self) -> None:
        if self._owner != os.getpid():   # a fresh worker (or the CLI): its own thread and connections
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite store")
            self._connection = self._reader = self._writer = None
            self._in_thread = self._commits = 0
            self._owner = os.getpid()

    def _open_reader(self) -> sqlite3.Connection:
        if not os.path.exists(self.path):
            raise sqlite3.OperationalError("no store file yet")   # the thread's connection makes it
        # timeout 0: never wait on a lock in the reactor; autocommit: no transaction left open.
        uri = Path(self.path).resolve().as_uri() + "?mode=ro"
        reader = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
        self._reader = reader
        return reader

    def _write_here(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        writer = self._writer or self._open_writer()
        try:
            writer.execute("BEGIN IMMEDIATE")   # the write lock now, or SQLITE_BUSY at once (timeout 0)
        except sqlite3.Error:
            raise _WouldWait from None
        try:
            rows: list[Any] = []
            for sql, params in statements:
                rows = writer.execute(sql, params).fetchall()
            writer.execute("COMMIT")
        except sqlite3.Error as error:
            self._writer = None
            writer.close()   # and with it what the transaction had begun
            raise StoreError(f"{self.path}: {error}") from None
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY:
            self._commits = 0
            assert self._executor is not None
            self._executor.submit(self._checkpoint)
        return rows

    def _open_writer(self) -> sqlite3.Connection:
        if self._connection is None:
            raise _WouldWait   # the thread's connection makes the file and its tables first
        try:
            writer = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            writer.execute("PRAGMA synchronous=NORMAL")
            writer.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error:
            raise _WouldWait from None
        self._writer = writer
        return writer

    def _checkpoint(self) -> None:
        try:
            (self._connection or self._connect()).execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass   # the next one, or the thread's own commits (autocheckpoint on), do it

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
