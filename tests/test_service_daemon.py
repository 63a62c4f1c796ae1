"""`oversipd run --daemonize` (SPEC §4): returns 0 once ready, 1 with the error when start-up fails."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from oversipd.pidfile import read_pid
from oversipd.testing import Daemon
from service_modules import LIFECYCLE_PROBE, fatal_on_started

WORKERS = 2
COMMAND_TIMEOUT = 60

PROBE = LIFECYCLE_PROBE

FATAL_MESSAGE = "the license server said no"
FATAL = fatal_on_started(FATAL_MESSAGE)

NEVER_READY = '''
import asyncio
from oversipd import SystemCallbacks


@SystemCallbacks.on_started
async def started():
    await asyncio.Event().wait()  # never set: this worker never finishes starting
'''


def kill_master(pid_file: Path) -> None:
    """Leave nothing behind: SIGKILL the daemon recorded in `pid_file` and its workers."""
    pid = read_pid(pid_file)
    if pid is None:
        return
    try:
        master = psutil.Process(pid)
        if not " ".join(master.cmdline()).startswith("oversipd: master"):
            return  # not ours (the file is stale and the pid reused)
        for process in [*master.children(), master]:
            process.kill()
    except psutil.NoSuchProcess:
        pass


@pytest.fixture
def daemonized(oversipd_daemon) -> Iterator[Callable[..., Daemon]]:
    """Factory of Daemon configurations with a pid file; whatever they leave running is killed."""
    made: list[Daemon] = []

    def make(modules: dict[str, str] | None = None, **core: Any) -> Daemon:
        daemon = oversipd_daemon(start=False, modules=modules or {"probe": PROBE},
                                 core={"workers": WORKERS, "pid_file": "oversipd.pid", **core})
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        kill_master(daemon.directory / "oversipd.pid")


def launch(daemon: Daemon, *args: str):
    return daemon.run_command("run", "-c", str(daemon.conf_path), "--daemonize", *args,
                              timeout=COMMAND_TIMEOUT)


def test_returns_0_once_every_worker_ran_on_started(daemonized) -> None:
    daemon = daemonized()
    result = launch(daemon)  # capture_output: it must not wait for the daemon's stdio
    returned = time.monotonic_ns()
    assert result.returncode == 0, result.stderr
    started = daemon.wait_events("on_started", WORKERS)
    assert all(event["t"] < returned for event in started)
    pid = read_pid(daemon.directory / "oversipd.pid")
    assert result.stdout.strip() == f"oversipd: started (pid {pid})"
    assert daemon.run_command("stop", "-c", str(daemon.conf_path)).returncode == 0
    assert sorted(e["error"] for e in daemon.wait_events("on_terminated", WORKERS)) == [False] * WORKERS


def test_the_daemon_is_detached(daemonized) -> None:
    daemon = daemonized()
    assert launch(daemon).returncode == 0
    master = psutil.Process(read_pid(daemon.directory / "oversipd.pid"))
    assert master.cmdline()[0].startswith("oversipd: master")
    assert os.getsid(master.pid) != os.getsid(0)      # a session of its own
    assert os.getsid(master.pid) != master.pid         # and not its leader: no terminal can come back
    assert master.cwd() == "/"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{master.pid}/fd/{fd}") == "/dev/null"


def test_import_failure_is_status_1_with_the_error_on_the_terminal(daemonized) -> None:
    daemon = daemonized(modules={"broken": "raise RuntimeError('the module is broken')\n"})
    result = launch(daemon)
    assert result.returncode == 1
    assert "module broken failed to import" in result.stderr
    assert "the module is broken" in result.stderr
    assert not (daemon.directory / "oversipd.pid").exists()


def test_launcher_fatal_in_on_started_is_status_1_with_the_message(daemonized) -> None:
    daemon = daemonized(modules={"probe": PROBE, "zfatal": FATAL})
    result = launch(daemon)
    assert result.returncode == 1
    assert f"CRIT: <Launcher> {FATAL_MESSAGE}" in result.stderr
    assert "exiting with error status" in result.stderr
    # The other workers were told the daemon is going down on an error.
    assert daemon.find("on_terminated", error=False) == []
    assert not (daemon.directory / "oversipd.pid").exists()


def test_not_ready_in_time_is_status_1_and_the_daemon_is_stopped(daemonized) -> None:
    daemon = daemonized(modules={"probe": PROBE, "slow": NEVER_READY})
    result = launch(daemon, "--ready-timeout", "1")
    assert result.returncode == 1
    assert "not ready within 1 s" in result.stderr
    daemon.wait_events("on_terminated", WORKERS)


def test_configuration_error_found_after_detaching_is_status_2(daemonized) -> None:
    daemon = daemonized()
    daemon.modules_dir.chmod(0o777)  # StrictModes: checked as the modules are imported
    try:
        result = launch(daemon)
    finally:
        daemon.modules_dir.chmod(0o755)
    assert result.returncode == 2
    assert f"{daemon.modules_dir}: writable by group or others" in result.stderr


def test_already_running_is_status_1_on_the_terminal(daemonized) -> None:
    daemon = daemonized()
    assert launch(daemon).returncode == 0
    pid = read_pid(daemon.directory / "oversipd.pid")
    again = launch(daemon)
    assert again.returncode == 1
    assert f"already running (pid {pid})" in again.stderr
    assert daemon.run_command("stop", "-c", str(daemon.conf_path)).returncode == 0


def test_a_daemon_stopped_before_it_was_ready_is_a_failed_start(daemonized) -> None:
    """A stop during start-up is not a successful start."""
    daemon = daemonized(modules={"probe": PROBE, "slow": NEVER_READY})
    launcher = subprocess.Popen(daemon.command("run", "-c", str(daemon.conf_path), "--daemonize"),
                                env=daemon.environment(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    daemon.wait_events("on_started", WORKERS)  # the probe ran; the slow module never ends
    os.kill(read_pid(daemon.directory / "oversipd.pid"), signal.SIGTERM)
    _, err = launcher.communicate(timeout=COMMAND_TIMEOUT)
    assert launcher.returncode == 1
    assert "stopped before it was ready" in err
