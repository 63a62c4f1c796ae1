"""Which process this is: `role` is "master" or "worker"; `worker_id` is the slot 1..N."""

from __future__ import annotations

role: str = "master"
worker_id: int | None = None


def become_worker(slot_id: int) -> None:
    global role, worker_id
    role, worker_id = "worker", slot_id
