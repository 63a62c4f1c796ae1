"""SPEC §3 and §4 — configuration and command line: mistakes exit 2 with one line, nothing started."""

import subprocess
import sys

import pytest

from conftest import PROBE, check_fails_cleanly

BAD_CORE_VALUES = [
    ("workers", 0), ("workers", "two"), ("workers", 1.5), ("workers", True), ("workers", 5000),
    ("log_level", "loud"), ("log_level", 3), ("syslog_facility", "nowhere"),
    ("graceful_timeout", -1), ("graceful_timeout", "10"), ("worker_timeout", -0.5),
    ("respawn_limit", -1), ("respawn_limit", 2.5), ("pid_file", 12), ("user", []),
]


@pytest.mark.parametrize("key,value", BAD_CORE_VALUES)
def test_a_wrong_type_or_out_of_range_value_names_the_file_and_key(oversipd_daemon, key, value):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={key: value}, start=False)
    result = daemon.run_command("run", "-c", str(daemon.conf_path))
    check_fails_cleanly(daemon, result, str(daemon.conf_path), f"core.{key}")


@pytest.mark.parametrize("text,fragment", [
    ("[core]\nworkers = \n", "invalid TOML"),
    ("[core]\nworkerz = 2\n", "core.workerz"),
    ("[cores]\nworkers = 2\n", "cores"),
    ("core = 3\n", "core"),
    ("[modules]\nprobe = 3\n", "modules.probe"),
    ("\xff\xfe", "UTF-8"),
])
def test_toml_mistakes_unknown_tables_and_keys_are_refused(oversipd_daemon, text, fragment):
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    daemon.conf_path.write_bytes(text.encode("latin-1"))
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    check_fails_cleanly(daemon, result, str(daemon.conf_path), fragment)


def test_a_missing_configuration_file_is_named(oversipd_daemon, tmp_path):
    daemon = oversipd_daemon(start=False)
    result = daemon.run_command("run", "-c", str(tmp_path / "absent.conf"))
    check_fails_cleanly(daemon, result, "absent.conf", "not found")


@pytest.mark.parametrize("key", ["modules_dir", "server_script"])
def test_an_explicitly_named_path_must_exist(oversipd_daemon, key):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={key: "nowhere"}, start=False)
    result = daemon.run_command("run", "-c", str(daemon.conf_path))
    check_fails_cleanly(daemon, result, f"core.{key}", "nowhere")


def test_default_paths_may_be_absent(oversipd_daemon):
    daemon = oversipd_daemon(start=False)
    daemon.modules_dir.rmdir()
    daemon.start()
    assert daemon.stop() == 0


@pytest.mark.parametrize("args", [
    ["run", "--workers", "abc"], ["run", "--bogus"], ["run", "--log-level", "loud"],
    ["frobnicate", "-x"], ["check", "extra"],
])
def test_a_bad_command_line_exits_2_with_usage(oversipd_daemon, args):
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    result = daemon.run_command(*args, "-c", str(daemon.conf_path))
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr
    assert not daemon.find("imported")


def test_a_bad_command_line_value_names_the_option(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    result = daemon.run_command("run", "-c", str(daemon.conf_path), "--workers", "0")
    check_fails_cleanly(daemon, result, "--workers")


def test_relative_paths_resolve_against_the_configuration_directory(oversipd_daemon, tmp_path):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"modules_dir": "modules.d"}, start=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "oversipd", "check", "-c", str(daemon.conf_path)],
                   cwd=elsewhere, env=daemon.environment(), check=True, capture_output=True)
    daemon.wait_events("imported")


def test_the_configuration_path_defaults_to_the_environment(oversipd_daemon, tmp_path):
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    daemon.env = {"OVERSIPD_CONF": str(daemon.conf_path)}
    assert daemon.run_command("check").returncode == 0
    daemon.wait_events("imported")
    daemon.env = {"OVERSIPD_CONF": ""}
    result = daemon.run_command("check")
    assert result.returncode == 2 and "/etc/oversipd/oversipd.conf" in result.stderr


def test_check_validates_and_imports_modules_but_runs_nothing(oversipd_daemon):
    server = "from oversipd.testing import record\nfrom oversipd import SystemEvents\n" \
             "SystemEvents.on_initialize(lambda: record('initialize'))\n"
    daemon = oversipd_daemon(modules={"probe": PROBE}, server_script=server, start=False)
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    daemon.wait_events("imported")
    assert not daemon.find("initialize") and not daemon.find("started")


def test_check_exits_1_when_a_module_fails_to_import(oversipd_daemon):
    daemon = oversipd_daemon(modules={"broken": "raise ImportError('no such driver')\n"}, start=False)
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    assert result.returncode == 1
    assert "module broken failed to import" in result.stderr
    assert "no such driver (ImportError)" in result.stderr


@pytest.mark.parametrize("target", ["directory", "file"])
def test_group_or_world_writable_modules_are_refused(oversipd_daemon, target):
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    path = daemon.modules_dir if target == "directory" else daemon.modules_dir / "probe.py"
    path.chmod(0o777 if target == "directory" else 0o666)
    result = daemon.run_command("run", "-c", str(daemon.conf_path))
    check_fails_cleanly(daemon, result, str(path), "writable by group or others")
    allowed = daemon.run_command("check", "-c", str(daemon.conf_path), "--insecure-modules")
    assert allowed.returncode == 0, allowed.stderr


def test_an_unknown_user_is_a_configuration_error(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"user": "no-such-user-xyz"}, start=False)
    result = daemon.run_command("run", "-c", str(daemon.conf_path))
    check_fails_cleanly(daemon, result, "core.user", "no-such-user-xyz")


def test_command_line_options_override_the_file(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 1}, args=("--workers", "3"))
    daemon.wait_events("started", count=3)
    assert daemon.stop() == 0


def test_version():
    result = subprocess.run([sys.executable, "-m", "oversipd", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("oversipd ")
