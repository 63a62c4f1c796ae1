"""The pid file (SPEC §3 core.pid_file, §4 --pid-file): created safely, locked, always removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from oversipd.pidfile import PidFile, read_pid
from service_modules import fatal_on_started

PROBE = '''
import os
from oversipd import SystemCallbacks
from oversipd.testing import record


@SystemCallbacks.on_started
def started():
    record("on_started", fds=sorted(os.listdir("/proc/self/fd")))
'''

FATAL_ON_STARTED = fatal_on_started("cannot go on")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_foreground_daemon_records_its_pid_and_removes_the_file_on_stop(oversipd_daemon, tmp_path) -> None:
    pid_file = tmp_path / "master.pid"
    daemon = oversipd_daemon(modules={"probe": PROBE}, args=("--pid-file", str(pid_file)))
    assert read_pid(pid_file) == daemon.pid
    assert daemon.stop() == 0
    assert not pid_file.exists()


def test_pid_file_from_the_configuration_is_relative_to_it(oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"pid_file": "run/oversipd.pid"}, start=False)
    (daemon.directory / "run").mkdir()
    daemon.start()
    assert read_pid(daemon.directory / "run" / "oversipd.pid") == daemon.pid
    assert daemon.stop() == 0
    assert not (daemon.directory / "run" / "oversipd.pid").exists()


def test_second_master_exits_1_naming_the_running_one(oversipd_daemon, tmp_path) -> None:
    pid_file = tmp_path / "master.pid"
    first = oversipd_daemon(modules={"probe": PROBE}, args=("--pid-file", str(pid_file)))
    second = oversipd_daemon(modules={"probe": PROBE}, start=False)
    result = second.run_command("run", "-c", str(second.conf_path), "--pid-file", str(pid_file))
    assert result.returncode == 1
    assert f"already running (pid {first.pid})" in result.stderr
    assert second.find("on_started") == []
    assert read_pid(pid_file) == first.pid  # untouched


def test_a_live_pid_written_by_someone_else_also_counts(oversipd_daemon, tmp_path) -> None:
    pid_file = tmp_path / "master.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    result = daemon.run_command("run", "-c", str(daemon.conf_path), "--pid-file", str(pid_file))
    assert result.returncode == 1
    assert f"already running (pid {os.getpid()})" in result.stderr
    assert pid_file.read_text() == f"{os.getpid()}\n"


def test_stale_or_garbled_pid_file_is_replaced(oversipd_daemon, tmp_path) -> None:
    for content in (f"{dead_pid()}\n", "not a pid\n", ""):
        pid_file = tmp_path / "master.pid"
        pid_file.write_text(content)
        daemon = oversipd_daemon(modules={"probe": PROBE}, args=("--pid-file", str(pid_file)))
        assert read_pid(pid_file) == daemon.pid
        assert daemon.stop() == 0
        assert not pid_file.exists()


def test_symlink_is_not_followed(oversipd_daemon, tmp_path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    pid_file = tmp_path / "master.pid"
    pid_file.symlink_to(target)
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    result = daemon.run_command("run", "-c", str(daemon.conf_path), "--pid-file", str(pid_file))
    assert result.returncode == 1
    assert f"{pid_file}: cannot create the pid file: is a symbolic link" in result.stderr
    assert target.read_text() == "precious\n"
    assert daemon.find("on_started") == []


def test_missing_directory_is_one_line_and_status_1(oversipd_daemon, tmp_path) -> None:
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    pid_file = tmp_path / "no" / "such" / "master.pid"
    result = daemon.run_command("run", "-c", str(daemon.conf_path), "--pid-file", str(pid_file))
    assert result.returncode == 1
    assert result.stderr.strip() == f"oversipd: {pid_file}: cannot create the pid file: No such file or directory"


def test_removed_when_a_worker_calls_launcher_fatal(oversipd_daemon, tmp_path) -> None:
    pid_file = tmp_path / "master.pid"
    daemon = oversipd_daemon(modules={"fatal": FATAL_ON_STARTED}, start=False)
    daemon.start("--pid-file", str(pid_file), wait=False)
    assert daemon.wait_exit() == 1
    assert not pid_file.exists()


def test_removed_when_a_module_fails_to_import(oversipd_daemon, tmp_path) -> None:
    pid_file = tmp_path / "master.pid"
    daemon = oversipd_daemon(modules={"broken": "raise RuntimeError('no')\n"}, start=False)
    daemon.start("--pid-file", str(pid_file), wait=False)
    assert daemon.wait_exit() == 1
    assert not pid_file.exists()


def test_removed_on_sigint(oversipd_daemon, tmp_path) -> None:
    pid_file = tmp_path / "master.pid"
    daemon = oversipd_daemon(modules={"probe": PROBE}, args=("--pid-file", str(pid_file)))
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit() == 0
    assert not pid_file.exists()


def test_workers_do_not_hold_the_pid_file(oversipd_daemon, tmp_path) -> None:
    pid_file = tmp_path / "master.pid"
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2},
                             args=("--pid-file", str(pid_file)))
    daemon.wait_events("on_started", 2)
    for pid in daemon.worker_pids().values():
        targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
                   if os.path.exists(f"/proc/{pid}/fd/{fd}")}
        assert str(pid_file) not in targets


def test_pid_file_left_by_someone_else_is_not_removed() -> None:
    """release() leaves a file that was replaced behind the holder's back."""
    import tempfile
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.pid"
        held = PidFile(path)
        held.acquire()
        path.unlink()
        path.write_text("12345\n")
        held.release()
        assert path.read_text() == "12345\n"
