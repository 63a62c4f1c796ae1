"""`oversipd reload | stop | status` (SPEC §4), through the pid file."""

from __future__ import annotations

import signal
import subprocess
import sys

from oversipd.control_commands import STOP_MARGIN
from oversipd.testing import Daemon
from service_modules import LIFECYCLE_PROBE

WORKERS = 2

PROBE = LIFECYCLE_PROBE


def running(oversipd_daemon, **core) -> Daemon:
    daemon = oversipd_daemon(modules={"probe": PROBE},
                             core={"workers": WORKERS, "pid_file": "oversipd.pid", **core})
    daemon.wait_events("on_started", WORKERS)
    return daemon


def not_running(oversipd_daemon) -> Daemon:
    return oversipd_daemon(modules={"probe": PROBE}, start=False, core={"pid_file": "oversipd.pid"})


def command(daemon: Daemon, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon.run_command(name, "-c", str(daemon.conf_path), *args)


# --- status ------------------------------------------------------------------------

def test_status_lists_master_and_workers(oversipd_daemon) -> None:
    daemon = running(oversipd_daemon)
    result = command(daemon, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"oversipd: running: master pid {daemon.pid}, {WORKERS} worker(s)")
    header, *rows = (line.split() for line in lines[1:])
    assert header == ["ROLE", "SLOT", "GEN", "PID", "STATE", "UPTIME", "RSS", "CPU"]
    assert rows[0][:4] == ["master", "-", "-", str(daemon.pid)]
    workers = {int(row[1]): int(row[3]) for row in rows[1:]}
    assert workers == daemon.worker_pids()
    assert all(row[2] == "1" for row in rows[1:])
    for row in rows:
        role, slot, generation, pid, state, uptime, rss, rss_unit, cpu, cpu_unit = row
        assert state in ("sleeping", "running")
        assert uptime.count(":") == 2
        assert float(rss) > 0 and rss_unit == "MiB"
        assert float(cpu) >= 0 and cpu_unit == "s"


def test_status_exits_3_when_not_running(oversipd_daemon) -> None:
    daemon = not_running(oversipd_daemon)
    result = command(daemon, "status")
    assert result.returncode == 3
    assert result.stdout.strip() == f"oversipd: not running (pid file {daemon.directory / 'oversipd.pid'})"


def test_status_exits_3_on_a_stale_pid_file(oversipd_daemon) -> None:
    daemon = not_running(oversipd_daemon)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (daemon.directory / "oversipd.pid").write_text(f"{dead.pid}\n")
    assert command(daemon, "status").returncode == 3


def test_status_with_pid_file_option(oversipd_daemon, tmp_path) -> None:
    pid_file = tmp_path / "elsewhere.pid"
    daemon = oversipd_daemon(modules={"probe": PROBE}, args=("--pid-file", str(pid_file)))
    result = daemon.run_command("status", "--pid-file", str(pid_file))
    assert result.returncode == 0
    assert f"master pid {daemon.pid}" in result.stdout


def test_no_pid_file_configured_is_a_configuration_error(oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    for name in ("status", "reload", "stop"):
        result = command(daemon, name)
        assert result.returncode == 2
        assert f"{daemon.conf_path}: core.pid_file:" in result.stderr
        assert "--pid-file" in result.stderr


# --- reload --------------------------------------------------------------------------

def test_reload_sends_hup(oversipd_daemon) -> None:
    daemon = running(oversipd_daemon)
    result = command(daemon, "reload")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"oversipd: sent SIGHUP to the master (pid {daemon.pid})"
    assert sorted(e["worker"] for e in daemon.wait_events("on_reload", WORKERS)) == [1, 2]


def test_reload_exits_1_when_not_running(oversipd_daemon) -> None:
    daemon = not_running(oversipd_daemon)
    result = command(daemon, "reload")
    assert result.returncode == 1
    assert "not running" in result.stderr


# --- stop ------------------------------------------------------------------------------

def test_stop_returns_once_the_master_is_gone(oversipd_daemon) -> None:
    daemon = running(oversipd_daemon)
    result = command(daemon, "stop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"oversipd: stopped (pid {daemon.pid})"
    # Gone already: the master is a zombie of this test process, waiting to be reaped.
    assert daemon.process.poll() == 0
    assert sorted((e["worker"], e["error"]) for e in daemon.find("on_terminated")) == \
        [(1, False), (2, False)]
    assert not (daemon.directory / "oversipd.pid").exists()


def test_stop_exits_0_when_nothing_runs(oversipd_daemon) -> None:
    daemon = not_running(oversipd_daemon)
    result = command(daemon, "stop")
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout


def test_stop_exits_1_when_the_master_outlives_graceful_timeout(oversipd_daemon, tmp_path) -> None:
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); signal.pause()"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
        pid_file = tmp_path / "stubborn.pid"
        pid_file.write_text(f"{stubborn.pid}\n")
        daemon = oversipd_daemon(modules={"probe": PROBE}, start=False, core={"graceful_timeout": 0.5})
        result = daemon.run_command("stop", "-c", str(daemon.conf_path), "--pid-file", str(pid_file))
        assert result.returncode == 1
        assert f"still running {0.5 + STOP_MARGIN:g} s after SIGTERM" in result.stderr
        assert stubborn.poll() is None
    finally:
        stubborn.send_signal(signal.SIGKILL)
        stubborn.wait()


def test_commands_use_the_default_configuration(oversipd_daemon) -> None:
    daemon = running(oversipd_daemon)
    env = {**daemon.environment(), "OVERSIPD_CONF": str(daemon.conf_path)}
    result = subprocess.run(daemon.command("status"), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert f"master pid {daemon.pid}" in result.stdout
