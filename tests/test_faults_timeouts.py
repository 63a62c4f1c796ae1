"""Timeouts at their extremes: what `check` accepts, `run` must survive (SPEC §3, §5)."""

from __future__ import annotations

import signal

SLOW_ON_TERMINATED = """
import time
from oversipd import SystemCallbacks
from oversipd.testing import record


@SystemCallbacks.on_terminated
def slow(error):
    record("terminating")
    time.sleep(60)  # blocks the reactor: only graceful_timeout ends this worker
"""


def test_huge_timeouts_are_legal(oversipd_daemon):
    """Values far beyond what epoll can wait for in one call: the master must not overflow."""
    daemon = oversipd_daemon(core={"workers": 2, "worker_timeout": 1e300, "graceful_timeout": 1e300})
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("reload done")
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()


def test_graceful_timeout_kills_a_hung_on_terminated(oversipd_daemon):
    """After graceful_timeout the rest are killed, and the stop still ends with status 0."""
    daemon = oversipd_daemon(modules={"slow": SLOW_ON_TERMINATED},
                             core={"workers": 2, "graceful_timeout": 0.5})
    daemon.signal(signal.SIGTERM)
    daemon.wait_events("terminating", count=2)
    assert daemon.wait_exit(30) == 0
    log = daemon.log_text()
    assert "still running after graceful_timeout; SIGKILL" in log
    assert log.count("killed by SIGKILL") == 2
    assert "Traceback" not in log


def test_graceful_timeout_bounds_a_worker_removed_by_ttou(oversipd_daemon):
    """A worker retired by SIGTTOU whose on_terminated hangs is killed, and the count converges."""
    daemon = oversipd_daemon(modules={"slow": SLOW_ON_TERMINATED},
                             core={"workers": 2, "graceful_timeout": 0.5})
    pid = daemon.worker_pids()[2]
    daemon.signal(signal.SIGTTOU)
    daemon.wait_events("terminating", pid=pid)
    daemon.wait_log(f"(pid {pid}) killed by SIGKILL")
    assert list(daemon.worker_pids()) == [1]
    assert daemon.stop(30) == 0


BLOCKING_ON_RELOAD = """
import time
from oversipd import SystemCallbacks


@SystemCallbacks.on_reload
def reload_blocks_the_reactor():
    time.sleep(60)
"""


def test_worker_timeout_prints_the_stuck_stack(oversipd_daemon):
    """README: a stuck reactor gets SIGABRT, and faulthandler prints where it was stuck."""
    daemon = oversipd_daemon(modules={"stuck": BLOCKING_ON_RELOAD},
                             core={"workers": 1, "worker_timeout": 1.0})
    pid = daemon.worker_pids()[1]
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(f"(pid {pid}) killed by SIG", timeout=30)
    daemon.wait_log("in reload_blocks_the_reactor")
    assert "Fatal Python error: Aborted" in daemon.log_text()


# Seed 888800902 (docs/RELIABILITY.md): a fork that takes longer than
# worker_timeout.  The stall is injected where the master's fork spends it,
# after the heartbeat cell was written for the child and before the child exists.
SLOW_FORK = """
import os
import time
from oversipd import process

def slow_fork():
    if process.role == "master":
        time.sleep(1.5)   # the injected fault: a fork that takes 1.5 s

def child_starts():
    time.sleep(0.3)       # a child well within worker_timeout before its reactor's first beat

os.register_at_fork(before=slow_fork, after_in_child=child_starts)
"""


def test_a_fork_slower_than_worker_timeout_does_not_make_the_child_look_stuck(oversipd_daemon):
    daemon = oversipd_daemon(modules={"slowfork": SLOW_FORK}, core={"workers": 1, "worker_timeout": 1})
    pid = daemon.kill_worker(1)
    daemon.wait_log(f"(pid {pid}) killed by SIGKILL")
    daemon.wait_workers(1)
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert "reactor unresponsive" not in log and "SIGABRT" not in log
