"""gunicorn's benchmark probe: a config file whose server hooks timestamp events.

Each event is one `EVENT PID TIME_NS` line appended to the file named by
$BENCH_EVENTS, TIME_NS being CLOCK_MONOTONIC (time.monotonic_ns), the
clock the harness uses for the signals it sends.  Everything but the
hooks, the worker count and the bind address is left at gunicorn's defaults.
"""

import os
import time

_path = os.environ.get("BENCH_EVENTS", "")
_fds = {}

bind = os.environ.get("BENCH_BIND", "127.0.0.1:0")
workers = int(os.environ.get("BENCH_WORKERS", "1"))


def emit(event, pid=None):
    """Append one line; a write of a few bytes with O_APPEND is atomic."""
    stamp = time.monotonic_ns()
    if not _path:
        return
    me = os.getpid()
    fd = _fds.get(me)  # one descriptor per process: a forked child opens its own
    if fd is None:
        fd = _fds[me] = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, f"{event} {pid or me} {stamp}\n".encode())
    except OSError:
        pass


def on_starting(server):
    emit("loaded")  # in the master, before the fork


def post_worker_init(worker):
    emit("started")


def worker_exit(server, worker):
    emit("terminated", worker.pid)


def on_reload(server):
    emit("reload_hook")
