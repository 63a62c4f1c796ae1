"""Which process this is: `role` is "master" or "worker"; `worker_id` is the slot 1..N."""

from __future__ import annotations

role: str = "master"
worker_id: int | None = None


def become_worker(slot_id: int) -> None:
    global role, worker_id
    role, worker_id = "worker", slot_id


def set_title(title: str) -> None:
    """The process title `ps` shows (setproctitle), when the package is there."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)
