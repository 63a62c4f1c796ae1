"""Worker liveness through shared memory, so a heartbeat never wakes the master.

Each slot owns one 8-byte cell of an anonymous shared mapping made before
the fork; while a code reload swaps generations, the old and the new
worker of a slot both run, so a slot has one cell per generation parity
(two generations at most run at once).  A worker's reactor writes time.monotonic() there; the master
reads the cell only when that slot's worker_timeout deadline comes due.
"""

from __future__ import annotations

import mmap
import struct
import time

from .settings import MAX_WORKERS

_CELL = struct.Struct("d")
# An idle worker beats this often at most; worker_timeout/4 when that is shorter.
MAX_INTERVAL = 5.0


CELLS_PER_GENERATION = MAX_WORKERS + 1


def cell_of(slot_id: int, generation: int = 1) -> int:
    """The board cell of the worker in `slot_id` of `generation`."""
    return slot_id + (generation % 2) * CELLS_PER_GENERATION


class HeartbeatBoard:
    def __init__(self, cells: int = 2 * CELLS_PER_GENERATION, max_interval: float = MAX_INTERVAL) -> None:
        self._map = mmap.mmap(-1, _CELL.size * cells)
        self.max_interval = max_interval

    def interval(self, worker_timeout: float) -> float:
        """How often a worker beats: a few beats fit in worker_timeout and in max_interval."""
        return min(self.max_interval, worker_timeout / 4) if worker_timeout else self.max_interval

    def beat(self, cell: int, now: float | None = None) -> None:
        _CELL.pack_into(self._map, cell * _CELL.size, time.monotonic() if now is None else now)

    def last_beat(self, cell: int) -> float:
        return _CELL.unpack_from(self._map, cell * _CELL.size)[0]
