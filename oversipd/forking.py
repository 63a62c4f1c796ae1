"""What every child the master forks does first: drop the master's signal set-up and its descriptors.

Workers (worker.py), the throw-away code check of a new generation
(generations.py) and the upgraded core's check (reexec.py) all start this
way; the helpers live here, below all three, so that none imports another.
"""

from __future__ import annotations

import os
import signal

# Terminal and control signals are the master's business: a Ctrl-C or a
# hang-up sent to the whole process group must reach each worker only
# through the master, so that it stops exactly once.
IGNORED_IN_WORKER = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                     signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH,
                     signal.SIGPIPE)
DEFAULT_IN_WORKER = (signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM)


def reset_signals_after_fork() -> None:
    """Undo the master's signal set-up; called first thing in the child."""
    signal.set_wakeup_fd(-1)
    for signum in IGNORED_IN_WORKER:
        signal.signal(signum, signal.SIG_IGN)
    for signum in DEFAULT_IN_WORKER:
        signal.signal(signum, signal.SIG_DFL)


def close_inherited(fds: list[int]) -> None:
    # Every master end of every control channel must go: otherwise the
    # master's death never shows up as EOF in any worker.
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
