"""The SQLite driver measurement of docs/registrar.md: sqlite3 inline, sqlite3 in one thread (our store), aiosqlite.

Run by hand: `.venv/bin/pip install aiosqlite && .venv/bin/python bench/sqlite_driver.py`.
"""
import asyncio
import sqlite3
import tempfile
import time
from oversipd.sip.store.sqlite import SqliteStore
from oversipd.sip.store.base import Binding, SCHEMA
N = 2000
d = tempfile.mkdtemp()

async def ours():
    store = SqliteStore("sqlite://" + d + "/a.db")
    b = Binding("sip:a@x", "k", "sip:a@1.2.3.4", time.time() + 600, "c", 1, ("<sip:p;lr>",))
    await store.put(b)
    t = time.perf_counter()
    for i in range(N):
        await store.bindings("sip:a@x", time.time())
    r = (time.perf_counter() - t) / N
    t = time.perf_counter()
    for i in range(N):
        await store.put(b)
    w = (time.perf_counter() - t) / N
    return r, w

async def aio():
    import aiosqlite
    async with aiosqlite.connect(d + "/b.db") as db:
        await db.execute("PRAGMA journal_mode=WAL"); await db.execute("PRAGMA synchronous=NORMAL")
        for s in SCHEMA: await db.execute(s)
        await db.commit()
        b = Binding("sip:a@x", "k", "sip:a@1.2.3.4", time.time() + 600, "c", 1, ("<sip:p;lr>",))
        from oversipd.sip.store.sql import UPSERT_BINDING
        await db.execute(UPSERT_BINDING, b.row()); await db.commit()
        t = time.perf_counter()
        for i in range(N):
            await db.execute("DELETE FROM bindings WHERE aor = ? AND expires <= ?", ("sip:a@x", time.time()))
            async with db.execute("SELECT * FROM bindings WHERE aor = ?", ("sip:a@x",)) as c:
                await c.fetchall()
            await db.commit()
        r = (time.perf_counter() - t) / N
        t = time.perf_counter()
        for i in range(N):
            await db.execute(UPSERT_BINDING, b.row()); await db.commit()
        w = (time.perf_counter() - t) / N
        return r, w

def inline():
    db = sqlite3.connect(d + "/c.db")
    db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=NORMAL")
    for s in SCHEMA: db.execute(s)
    from oversipd.sip.store.sql import UPSERT_BINDING
    b = Binding("sip:a@x", "k", "sip:a@1.2.3.4", time.time() + 600, "c", 1, ("<sip:p;lr>",))
    with db: db.execute(UPSERT_BINDING, b.row())
    t = time.perf_counter()
    for i in range(N):
        with db:
            db.execute("DELETE FROM bindings WHERE aor = ? AND expires <= ?", ("sip:a@x", time.time()))
            db.execute("SELECT * FROM bindings WHERE aor = ?", ("sip:a@x",)).fetchall()
    r = (time.perf_counter() - t) / N
    t = time.perf_counter()
    for i in range(N):
        with db: db.execute(UPSERT_BINDING, b.row())
    return r, (time.perf_counter() - t) / N

print("inline sqlite3 (blocks the reactor)", [f"{x*1e6:.0f} us" for x in inline()])
print("sqlite3 in one thread (ours)", [f"{x*1e6:.0f} us" for x in asyncio.run(ours())])
print("aiosqlite", [f"{x*1e6:.0f} us" for x in asyncio.run(aio())])
