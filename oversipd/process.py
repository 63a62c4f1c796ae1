"""Which process this is: `role` is "master" or "worker"; `worker_id` is the slot 1..N."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

# Titles `ps` shows (SPEC §1); `oversipd status` and the test fixture find
# the workers by them.
WORKER_TITLE_PREFIX = "oversipd: worker "

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


def master_title(conf_path: object) -> str:
    return f"oversipd: master [{conf_path}]"


def worker_title(slot_id: int) -> str:
    return f"{WORKER_TITLE_PREFIX}{slot_id}"


def worker_processes(master_pid: int) -> dict[int, "psutil.Process"]:
    """{slot: process} of the master's live workers, read from their titles."""
    import psutil  # only the inspecting side pays for the import

    found = {}
    for child in psutil.Process(master_pid).children():
        try:
            title = " ".join(child.cmdline()).strip()
        except psutil.Error:  # gone, or a zombie
            continue
        slot = title[len(WORKER_TITLE_PREFIX):]
        if title.startswith(WORKER_TITLE_PREFIX) and slot.isdigit():
            found[int(slot)] = child
    return found
