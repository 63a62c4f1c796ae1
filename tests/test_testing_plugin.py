"""oversipd.testing, the pytest plugin module authors use (docs/modules.md, "Testing")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oversipd.testing import Daemon

RECORDER = """
import oversipd
from oversipd import SystemCallbacks
from oversipd.testing import record

@SystemCallbacks.on_started
def started():
    record("started", greeting=oversipd.module_settings("recorder").get("greeting"))

@SystemCallbacks.on_reload
def reloaded():
    record("reloaded", greeting=oversipd.module_settings("recorder").get("greeting"))
"""

USER_RELOAD_SCRIPT = """
from oversipd import SystemEvents
from oversipd.testing import record

@SystemEvents.on_user_reload
def user_reload():
    record("user_reload")
"""

AUTHOR_TEST = '''
def test_my_module(oversipd_daemon):
    daemon = oversipd_daemon(modules={"mine": MODULE}, settings={"mine": {"answer": 42}}, workers=2)
    events = daemon.wait_events("answer", count=2)
    assert sorted(e["worker"] for e in events) == [1, 2]
    assert {e["value"] for e in events} == {42}
    assert daemon.stop() == 0

MODULE = """
import oversipd
from oversipd import SystemCallbacks
from oversipd.testing import record

@SystemCallbacks.on_started
def started():
    record("answer", value=oversipd.module_settings("mine")["answer"])
"""
'''


def test_the_fixture_reaches_a_module_authors_tests_through_the_entry_point(tmp_path: Path) -> None:
    # A separate pytest run that imports nothing from oversipd.testing: the
    # fixture comes from the pytest11 entry point of the installed oversipd.
    (tmp_path / "test_author.py").write_text(AUTHOR_TEST)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"--basetemp={tmp_path / 'basetemp'}", "test_author.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_reload_returns_once_workers_ran_on_reload_with_new_settings(oversipd_daemon) -> None:
    daemon: Daemon = oversipd_daemon(modules={"recorder": RECORDER}, workers=2,
                                     settings={"recorder": {"greeting": "hello"}})
    assert {e["greeting"] for e in daemon.wait_events("started", count=2)} == {"hello"}
    daemon.set_settings("recorder", {"greeting": "bonjour"})
    daemon.reload()
    reloads = daemon.wait_events("reloaded", count=2)
    assert {e["greeting"] for e in reloads} == {"bonjour"}
    assert sorted(e["worker"] for e in reloads) == [1, 2]


def test_worker_helpers_follow_ttin_ttou_and_respawns(oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"recorder": RECORDER}, workers=2)
    assert sorted(daemon.wait_workers(2)) == [1, 2]
    daemon.add_worker()
    assert sorted(daemon.wait_workers(3)) == [1, 2, 3]
    daemon.wait_events("started", worker=3)
    daemon.remove_worker()
    assert sorted(daemon.wait_workers(2)) == [1, 2]
    killed = daemon.kill_worker(1)
    daemon.wait_events("started", worker=1, count=2)
    assert daemon.worker_count() == 2
    assert daemon.worker_pids()[1] != killed
    assert daemon.running


def test_since_a_mark_only_later_events_and_lines_count(oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"recorder": RECORDER}, server_script=USER_RELOAD_SCRIPT)
    daemon.wait_events("started")
    daemon.wait_log("ready:")  # the log arrives through its own pipe, maybe after READY=1
    mark = daemon.mark()
    assert daemon.find("started", since=mark) == []
    assert daemon.log_lines("ready", since=mark) == []
    assert daemon.log_lines("ready")
    daemon.user_reload()
    assert len(daemon.wait_events("user_reload", since=mark)) == 1
    daemon.reload()
    daemon.wait_log("reload done", since=mark)
    # The event and the log line travel by different sockets: wait for the event, don't peek.
    assert len(daemon.wait_events("reloaded", since=mark)) == 1


def test_a_wait_that_times_out_says_what_it_waited_for(oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"recorder": RECORDER})
    with pytest.raises(TimeoutError, match="'never_recorded'"):
        daemon.wait_events("never_recorded", timeout=0.2)


def test_a_daemon_that_dies_while_starting_fails_with_its_log(oversipd_daemon) -> None:
    failing = "from oversipd import SystemCallbacks\nSystemCallbacks.on_started(lambda: 1 / 0)\n"
    with pytest.raises(AssertionError, match="exited with status 1"):
        oversipd_daemon(modules={"failing": failing})
