"""Signals that arrive together run nested on the alternate signal stack (issue 14, oversipd/altstack.py).

faulthandler's own alternate stack holds about five nested signal frames on
an AVX-512 CPU; the sixth kills the process with SIGSEGV and the fifth may
corrupt the heap below it (tests/soak/altstack_overflow.py shows both).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
# The signals the master handles without stopping or changing its worker
# count (SIGCONT discards a pending SIGTTIN/SIGTTOU), delivered at once.
BURST = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGALRM, signal.SIGPIPE,
         signal.SIGCHLD)

NESTED_AFTER_INSTALL = """
import faulthandler, signal, sys
from oversipd import altstack
from soak.altstack_overflow import SIGNALS, alternate_stack, deliver_nested

faulthandler.enable()
altstack.install()
for signum in SIGNALS:
    signal.signal(signum, lambda *_: None)
deliver_nested(SIGNALS)
print(alternate_stack()[1])
"""


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_twelve_nested_signals_fit_on_the_installed_stack():
    result = python(NESTED_AFTER_INSTALL)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 16880  # larger than faulthandler's own


def test_without_the_installed_stack_twelve_nested_signals_kill_the_process():
    # The control: what the master suffered before the fix.
    result = python(NESTED_AFTER_INSTALL.replace("altstack.install()", ""))
    assert result.returncode == -signal.SIGSEGV


def test_the_master_survives_every_signal_it_handles_at_once(oversipd_daemon):
    daemon = oversipd_daemon(workers=2)
    since = daemon.mark()
    # Stopped, the master collects the signals as pending; SIGCONT lets them
    # all in at once, nested, as a burst from several senders would.
    daemon.signal(signal.SIGSTOP)
    try:
        for signum in BURST:
            daemon.signal(signum)
    finally:
        daemon.signal(signal.SIGCONT)
    daemon.wait_log("SIGUSR2: reloading with a new generation", since=since)
    daemon.wait_log("reload done", since=since)
    daemon.wait_log("SIGUSR1: every worker runs", since=since)
    for name in ("SIGWINCH", "SIGALRM", "SIGPIPE"):
        daemon.wait_log(f"ignoring {name}", since=since)
    assert daemon.running
    assert len(daemon.wait_workers(2)) == 2
    assert daemon.stop() == 0
