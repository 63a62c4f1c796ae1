"""Standalone reproducer (no oversipd): nested signals overflow faulthandler's alternate stack.

    python3 altstack_overflow.py [N]     # N distinct signals delivered at once (default 5)

CPython registers every Python-level signal handler with SA_ONSTACK, so after
faulthandler.enable() each of them runs on faulthandler's alternate stack
(SIGSTKSZ + AT_MINSIGSTKSZ bytes: 16,880 on an AVX-512 x86-64).  Signals that
are pending together are delivered nested, each frame below the last.  Here
N signals are blocked, sent to ourselves, and unblocked at once.  The script
compares the bytes just below the alternate stack (the heap block before it)
before and after: with 5 signals on such a CPU they change (silent heap
corruption; the process may crash later), with 6 or more the process dies
of SIGSEGV.  Exit status 1 when the memory below the stack changed.
Seen with CPython 3.10.13, 3.11.2 (Debian), 3.11.7, 3.12.1 and 3.13.0 on
Linux 6.18, glibc 2.36.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys

SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM,
           signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGALRM, signal.SIGPIPE, signal.SIGCHLD)
BELOW = 4096  # bytes watched below the alternate stack


class StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def alternate_stack() -> tuple[int, int]:
    current = StackT()
    if ctypes.CDLL(None, use_errno=True).sigaltstack(None, ctypes.byref(current)) != 0:
        raise OSError(ctypes.get_errno(), "sigaltstack")
    return current.ss_sp, current.ss_size


def deliver_nested(signals: tuple[int, ...]) -> None:
    """Make `signals` pending together, then let them all in at once."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    for signum in signals:
        os.kill(os.getpid(), signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    signals = SIGNALS[:count]
    faulthandler.enable()
    for signum in signals:
        signal.signal(signum, lambda *_: None)
    base, size = alternate_stack()
    before_below = ctypes.string_at(base - BELOW, BELOW)
    before_inside = ctypes.string_at(base, size)
    deliver_nested(signals)
    below = ctypes.string_at(base - BELOW, BELOW)
    inside = ctypes.string_at(base, size)
    changed = [i for i in range(BELOW) if below[i] != before_below[i]]
    lowest = min((i for i in range(size) if inside[i] != before_inside[i]), default=None)
    print(f"{count} nested signal(s): alternate stack of {size} bytes, lowest byte written at +{lowest}; "
          f"{len(changed)} byte(s) changed below it" + (f" (down to -{BELOW - min(changed)})" if changed else ""))
    sys.stdout.flush()
    os._exit(1 if changed else 0)  # a normal exit may crash in the corrupted heap


if __name__ == "__main__":
    main()
