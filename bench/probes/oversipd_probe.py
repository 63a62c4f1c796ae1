"""oversipd's benchmark probe: a drop-in module that timestamps its callbacks.

Each event is one `EVENT PID TIME_NS` line appended to the file named by
$BENCH_EVENTS, TIME_NS being CLOCK_MONOTONIC (time.monotonic_ns), the
clock the harness uses for the signals it sends.
"""

import os
import time

from oversipd import SystemCallbacks

_path = os.environ.get("BENCH_EVENTS", "")
_fd = None


def emit(event: str) -> None:
    """Append one line; a write of a few bytes with O_APPEND is atomic."""
    global _fd
    stamp = time.monotonic_ns()
    if not _path:
        return
    if _fd is None:
        # Non-blocking: the events file is a FIFO, and a daemon must not
        # hang on it when the harness is gone.
        _fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(_fd, f"{event} {os.getpid()} {stamp}\n".encode())
    except OSError:
        pass


emit("loaded")  # in the master, before the fork


@SystemCallbacks.on_started
def started() -> None:
    emit("started")


@SystemCallbacks.on_reload
def reloaded() -> None:
    emit("reloaded")


@SystemCallbacks.on_terminated
def terminated(error: bool) -> None:
    emit("terminated")
