"""SPEC §3 core.user / core.group: the master keeps its identity, every worker drops before any callback."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import uuid
from dataclasses import dataclass
from typing import Iterator

import psutil
import pytest

from oversipd.pidfile import read_pid
from oversipd.testing import Daemon

WORKERS = 2

PROBE = '''
import os
from oversipd import SystemCallbacks
from oversipd.testing import record


def try_to_regain_root():
    """What each attempt to become root again raised (nothing would mean it worked)."""
    attempts = {"setuid": lambda: os.setuid(0), "seteuid": lambda: os.seteuid(0),
                "setresuid": lambda: os.setresuid(0, 0, 0), "setgid": lambda: os.setgid(0),
                "setgroups": lambda: os.setgroups([0])}
    outcome = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            outcome[name] = "succeeded"
        except OSError as error:
            outcome[name] = type(error).__name__
    return outcome


# Top-level code runs in the master, as root, before the fork.
record("imported", uid=os.getuid())


@SystemCallbacks.on_started
def started():
    record("on_started", resuid=os.getresuid(), resgid=os.getresgid(), groups=sorted(os.getgroups()),
           home=os.environ.get("HOME"), regain=try_to_regain_root(), still=os.getresuid())
'''


@dataclass
class ServiceUser:
    name: str
    uid: int
    gid: int
    extra_group: str
    extra_gid: int


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@pytest.fixture
def test_user() -> Iterator[ServiceUser]:
    """A throw-away system user with a supplementary group; removed afterwards."""
    suffix = uuid.uuid4().hex[:8]
    name, extra = f"ovst{suffix}", f"ovsx{suffix}"
    subprocess.run(["groupadd", "--system", extra], check=True)
    try:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                        f"/nonexistent/{name}", "--shell", "/usr/sbin/nologin", "--groups", extra, name],
                       check=True)
        try:
            entry = pwd.getpwnam(name)
            yield ServiceUser(name, entry.pw_uid, entry.pw_gid, extra, grp.getgrnam(extra).gr_gid)
        finally:
            subprocess.run(["userdel", name], check=True)
            subprocess.run(["groupdel", name], check=False)  # when USERGROUPS_ENAB left it
    finally:
        subprocess.run(["groupdel", extra], check=True)


def open_to_other_users(daemon: Daemon) -> None:
    """The workers, no longer root, must still reach the test's event socket."""
    sockets = daemon._sockets_dir
    sockets.chmod(0o755)
    for path in sockets.iterdir():
        path.chmod(0o666)


def start(oversipd_daemon, **core) -> Daemon:
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False,
                             core={"workers": WORKERS, "pid_file": "oversipd.pid", **core})
    open_to_other_users(daemon)
    daemon.start()
    return daemon


def test_workers_drop_to_user_and_its_groups_before_any_callback(test_user, oversipd_daemon) -> None:
    daemon = start(oversipd_daemon, user=test_user.name)
    uid, gid = test_user.uid, test_user.gid
    for event in daemon.wait_events("on_started", WORKERS):
        assert event["resuid"] == [uid, uid, uid]
        assert event["resgid"] == [gid, gid, gid]
        assert event["groups"] == sorted({gid, test_user.extra_gid})
        assert event["home"] == f"/nonexistent/{test_user.name}"
    for pid in daemon.worker_pids().values():
        worker = psutil.Process(pid)
        assert tuple(worker.uids()) == (uid, uid, uid)
        assert tuple(worker.gids()) == (gid, gid, gid)
    # The master keeps its identity: it ran the module's top-level code as
    # root before the fork, and it owns the pid file.
    assert tuple(psutil.Process(daemon.pid).uids()) == (0, 0, 0)
    assert daemon.find("imported")[0]["uid"] == 0
    pid_file = daemon.directory / "oversipd.pid"
    assert read_pid(pid_file) == daemon.pid and os.stat(pid_file).st_uid == 0


def test_a_module_cannot_regain_root(test_user, oversipd_daemon) -> None:
    daemon = start(oversipd_daemon, user=test_user.name)
    for event in daemon.wait_events("on_started", WORKERS):
        assert set(event["regain"].values()) == {"PermissionError"}, event["regain"]
        assert event["still"] == [test_user.uid] * 3


def test_group_overrides_the_users_primary_group(test_user, oversipd_daemon) -> None:
    daemon = start(oversipd_daemon, user=test_user.name, group=test_user.extra_group)
    extra = test_user.extra_gid
    for event in daemon.wait_events("on_started", WORKERS):
        assert event["resgid"] == [extra, extra, extra]
        assert event["resuid"] == [test_user.uid] * 3
        assert extra in event["groups"]


def test_reload_and_stop_still_work_after_the_drop(test_user, oversipd_daemon) -> None:
    daemon = start(oversipd_daemon, user=test_user.name)
    daemon.wait_events("on_started", WORKERS)
    assert daemon.run_command("reload", "-c", str(daemon.conf_path)).returncode == 0
    daemon.wait_notification("READY=1", count=2)  # the master, still root, re-read its config
    assert daemon.run_command("stop", "-c", str(daemon.conf_path)).returncode == 0
    assert daemon.wait_exit() == 0


@pytest.mark.parametrize("key", ["user", "group"])
def test_unknown_user_or_group_is_a_configuration_error(oversipd_daemon, key) -> None:
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False, core={key: "no-such-name-ovs"})
    result = daemon.run_command("run", "-c", str(daemon.conf_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"oversipd: {daemon.conf_path}: core.{key}: "
                                     f"no such {key} 'no-such-name-ovs'")
    assert daemon.find("imported") == []  # refused before any module was imported
