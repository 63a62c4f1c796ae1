"""Which process this is: `role` is "master" or "worker"; `worker_id` is the slot 1..N."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

# Titles `ps` shows (SPEC §1); `oversipd status` and the test fixture find
# the workers by them.
WORKER_TITLE_PREFIX = "oversipd: worker "

role: str = "master"
worker_id: int | None = None
generation: int = 1   # of the module code this process runs (SPEC §5: +1 per code reload; in the master, the newest)


def become_worker(slot_id: int, code_generation: int = 1) -> None:
    global role, worker_id, generation
    role, worker_id, generation = "worker", slot_id, code_generation


def set_title(title: str) -> None:
    """The process title `ps` shows (setproctitle), when the package is there."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def master_title(conf_path: object) -> str:
    return f"oversipd: master [{conf_path}]"


def worker_title(slot_id: int, code_generation: int = 1, degraded: bool = False) -> str:
    """`oversipd: worker K` (SPEC §1); after a code reload `oversipd: worker K (generation G)`.

    ` [degraded]` follows while the worker runs without a resource it could not open.
    """
    suffix = f" (generation {code_generation})" if code_generation > 1 else ""
    return f"{WORKER_TITLE_PREFIX}{slot_id}{suffix}{DEGRADED_MARK if degraded else ''}"


DEGRADED_MARK = " [degraded]"
_TITLE = re.compile(re.escape(WORKER_TITLE_PREFIX) + r"(\d+)(?: \(generation (\d+)\))?(?: \[degraded\])?$")


def all_worker_processes(master_pid: int) -> list[tuple[int, int, "psutil.Process"]]:
    """(slot, generation, process) of each of the master's live workers, read from their titles.

    While a code reload swaps generations a slot has two workers.
    """
    import psutil  # only the inspecting side pays for the import

    found = []
    for child in psutil.Process(master_pid).children():
        try:
            title = " ".join(child.cmdline()).strip()
        except psutil.Error:  # gone, or a zombie
            continue
        match = _TITLE.match(title)
        if match:
            found.append((int(match[1]), int(match[2] or 1), child))
    return sorted(found, key=lambda row: (row[0], row[1]))


def worker_processes(master_pid: int) -> dict[int, "psutil.Process"]:
    """{slot: process} of the master's live workers; the newest generation's in a slot that has two."""
    return {slot: child for slot, _, child in all_worker_processes(master_pid)}
