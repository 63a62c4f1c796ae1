"""Worker liveness through shared memory, so a heartbeat never wakes the master.

Each slot owns one 8-byte cell of an anonymous shared mapping made before
the fork.  A worker's reactor writes time.monotonic() there; the master
reads the cell only when that slot's worker_timeout deadline comes due.
"""

from __future__ import annotations

import mmap
import struct
import time

from .settings import MAX_WORKERS

_CELL = struct.Struct("d")


class HeartbeatBoard:
    def __init__(self, slots: int = MAX_WORKERS + 1) -> None:
        self._map = mmap.mmap(-1, _CELL.size * slots)

    def beat(self, slot_id: int, now: float | None = None) -> None:
        _CELL.pack_into(self._map, slot_id * _CELL.size, time.monotonic() if now is None else now)

    def last_beat(self, slot_id: int) -> float:
        return _CELL.unpack_from(self._map, slot_id * _CELL.size)[0]
