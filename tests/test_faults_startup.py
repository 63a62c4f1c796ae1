"""Signals that arrive during start-up, once the master handles signals but before READY=1 (SPEC §5, §6)."""

from __future__ import annotations

import signal

# on_started waits until the test creates the `release` file: the window
# between the fork and READY=1 stays open as long as the test needs.
HELD_ON_STARTED = """
import asyncio
import os
from oversipd import SystemCallbacks
from oversipd.testing import record

RELEASE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "release")


@SystemCallbacks.on_started
async def held():
    while not os.path.exists(RELEASE):
        await asyncio.sleep(0.02)
    record("started")


@SystemCallbacks.on_reload
def reloaded():
    record("reloaded")
"""


def first_ready(daemon) -> list[str]:
    daemon.wait_notification("READY=1")
    with daemon.notifications.changed:
        return next(message for message in daemon.notifications.items if "READY=1" in message)


def test_a_refused_reload_during_start_up_does_not_report_ready(oversipd_daemon):
    daemon = oversipd_daemon(start=False, modules={"held": HELD_ON_STARTED}, core={"workers": 2})
    daemon.start(wait=False)
    daemon.wait_log("started 2 worker(s)")  # signal handlers are installed
    daemon.write_conf("[core\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("reload refused")
    (daemon.directory / "release").touch()
    daemon.wait_events("started", count=2)
    assert "STATUS=2 of 2 worker(s) running" in " ".join(first_ready(daemon))
    assert daemon.stop() == 0


def test_a_reload_during_start_up_runs_after_on_started(oversipd_daemon):
    daemon = oversipd_daemon(start=False, modules={"held": HELD_ON_STARTED}, core={"workers": 2})
    daemon.start(wait=False)
    daemon.wait_log("started 2 worker(s)")
    daemon.signal(signal.SIGHUP)
    (daemon.directory / "release").touch()
    daemon.wait_log("reload done")
    assert "STATUS=2 of 2 worker(s) running" in " ".join(first_ready(daemon))
    for event in daemon.wait_events("reloaded", count=2):
        started = daemon.find("started", pid=event["pid"])
        assert started and started[0]["t"] < event["t"]
    assert daemon.stop() == 0


def test_stop_signals_repeated_until_the_master_is_gone(oversipd_daemon):
    """A stop is one stop: more TERM/INT/QUIT until the very end never turn exit 0 into death by signal."""
    import os
    import time

    daemon = oversipd_daemon(core={"workers": 2})
    daemon.signal(signal.SIGTERM)
    while daemon.process.poll() is None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            try:
                os.kill(daemon.pid, signum)
            except ProcessLookupError:
                break
        time.sleep(0.001)  # pacing the injected signals, not waiting for anything
    assert daemon.wait_exit() == 0
