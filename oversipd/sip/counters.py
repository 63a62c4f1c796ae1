"""SIP counters: one row per worker slot in a shared mapping that `oversipd status` reads.

The master creates the mapping before the first fork, as a file next to
the pid file (`PIDFILE.sip`), so that `oversipd status` — another process,
which finds the master through that pid file anyway — can read it.  Each
worker adds to its own slot's row only (no locks, no system calls: a
memoryview increment); a respawned worker goes on counting in the same
row, so the totals cover the daemon's whole life.  The last two cells are
gauges, not totals: the server and client transactions the slot's worker
holds now, written twice a second (and 0 when it closes), so that a
checker sees them drain once the traffic stops.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from ..settings import MAX_WORKERS

NAMES = ("received", "sent", "dropped", "retransmitted", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx",
         # SIP.md §15: each refusal of the admission control, and the 503s of a store not open
         "busy_503", "rate_503", "rate_drop", "conn_refused", "auth_403", "store_503",
         # gauges: the transactions held now (oversipd.sip.service.WorkerSip.count_transactions)
         "server_tx", "client_tx")
RECEIVED, SENT, DROPPED, RETRANSMITTED = 0, 1, 2, 3
FIRST_CLASS = 4          # + status // 100 - 1
BUSY_503, RATE_503, RATE_DROP, CONN_REFUSED, AUTH_403, STORE_503 = range(10, 16)
SERVER_TX, CLIENT_TX = 16, 17
ROW = len(NAMES)
CELL = 8                 # unsigned 64-bit
SIZE = (MAX_WORKERS + 1) * ROW * CELL
SUFFIX = ".sip"


def counters_path(pid_file: Path | None) -> Path | None:
    return None if pid_file is None else Path(str(pid_file) + SUFFIX)


class Counters:
    """The mapping; `row(slot)` is what a worker counts into."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is None:
            self._map = mmap.mmap(-1, SIZE)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.ftruncate(fd, SIZE)
                self._map = mmap.mmap(fd, SIZE)
            finally:
                os.close(fd)
        self._cells = memoryview(self._map).cast("Q")

    def row(self, slot_id: int) -> memoryview:
        return self._cells[slot_id * ROW:(slot_id + 1) * ROW]

    def remove(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def read_counters(pid_file: Path) -> dict[int, dict[str, int]] | None:
    """{slot: {name: value}} of every slot that counted something; None without the file."""
    path = counters_path(pid_file)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    cells = memoryview(data[:SIZE]).cast("Q") if len(data) >= SIZE else None
    if cells is None:
        return None
    rows = {}
    for slot in range(MAX_WORKERS + 1):
        values = cells[slot * ROW:(slot + 1) * ROW].tolist()
        if any(values):
            rows[slot] = dict(zip(NAMES, values))
    return rows
