"""Run oversipd with a timestamp at each phase boundary of start, respawn and stop.

For `python -m bench.profile` only: wraps a few core functions so each
writes `PHASE PID TIME_NS` to $BENCH_EVENTS on entry, then runs the
ordinary `oversipd` command line.  The measured daemon is otherwise the
real one.
"""

import os
import sys
import time

_path = os.environ.get("BENCH_EVENTS", "")
_fds = {}


def emit(event, stamp=None):
    stamp = stamp or time.monotonic_ns()
    me = os.getpid()
    fd = _fds.get(me)
    if fd is None:
        fd = _fds[me] = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, f"{event} {me} {stamp}\n".encode())
    except OSError:
        pass


emit("interpreter_up")

from oversipd import cli, master, supervision, worker  # noqa: E402  (the import is a measured phase)

emit("imported")


def on_entry(owner, name, event):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        emit(event)
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)


on_entry(master.Master, "run", "master_run")
on_entry(master.Master, "read_signals", "signal_read")
on_entry(supervision.Supervisor, "spawn_worker", "spawn")
on_entry(master.Master, "handle_stop_signal", "term_handled")
on_entry(supervision, "worker_main", "child_first_code")   # first Python code in the child after fork
on_entry(worker.Worker, "run", "worker_ready_for_loop")  # signals reset, fds closed, title set
on_entry(worker.Worker, "main", "loop_running")
on_entry(worker.Worker, "terminate", "terminate")
on_entry(os, "_exit", "os_exit")

if __name__ == "__main__":
    sys.argv[0] = "oversipd"
    cli.console_main()
