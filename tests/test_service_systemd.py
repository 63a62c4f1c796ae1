"""SPEC §6 under a real systemd: the installed unit started, reloaded, stopped, failing.

systemd boots as PID 1 of private namespaces (tests/service_harness.py)
with the tree of `make install DESTDIR=...` laid over the host's root.
The probe module reports its callbacks to a datagram socket the test owns
(shared into the container), so the tests wait for events, and wait on
`systemctl show` for the unit's state.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from oversipd.testing import EVENTS_ENV, _Inbox, bind_datagram_inbox
from service_modules import fatal_on_started
from service_harness import SHARE_PATH, BootedSystemd, missing_tools, staged_install
from test_core_reexec import NEW_VERSION, install_upgraded_core

TIMEOUT = 30.0
UNIT = "oversipd.service"
CONF = "/etc/oversipd/oversipd.conf"
PID_FILE = "/run/oversipd/oversipd.pid"
WORKERS = 2

PROBE = '''
import os
import oversipd
from oversipd import Logger, SystemCallbacks
from oversipd.testing import record

log = Logger("probe")


@SystemCallbacks.on_started
def started():
    record("on_started", uid=os.getuid(), euid=os.geteuid())
    log.log_system_warn(f"probe started in worker {oversipd.process.worker_id}")


@SystemCallbacks.on_reload
def reloaded():
    record("on_reload")


@SystemCallbacks.on_terminated
def terminated(error):
    record("on_terminated", error=error)
'''

FATAL_MESSAGE = "probe: the database is unreachable, giving up"
FATAL = fatal_on_started(FATAL_MESSAGE)

# site/: where a test puts an upgraded oversipd, ahead of the installed one.
TEST_DROP_IN = f"""[Service]
Environment={EVENTS_ENV}={SHARE_PATH}/events
Environment=PYTHONPATH={SHARE_PATH}/site
"""


def service_conf(modules_dir: str, pid_file: str = PID_FILE) -> str:
    return f"""[core]
workers = {WORKERS}
modules_dir = "{modules_dir}"
pid_file = "{pid_file}"
log_level = "info"
graceful_timeout = 10.0
"""


pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))


class Events:
    """Datagrams from record() in the service's workers, received on the host."""

    def __init__(self, path: Path) -> None:
        self.inbox = _Inbox()
        self.sock = bind_datagram_inbox(str(path), self.inbox, json.loads)
        path.chmod(0o666)  # the service runs as the unprivileged user oversipd

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self.inbox.changed:
            items = list(self.inbox.items)
        return [e for e in items if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    def wait(self, event: str, count: int, timeout: float = TIMEOUT, **match: Any) -> list[dict[str, Any]]:
        def enough(_: list[Any]) -> list[dict[str, Any]] | None:
            found = self.find(event, **match)
            return found if len(found) >= count else None
        return self.inbox.wait_for(enough, timeout, f"{count} x {event} {match or ''}")

    def clear(self) -> None:
        with self.inbox.changed:
            self.inbox.items.clear()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedSystemd]:
    """systemd booted with oversipd installed, its user made, the probe module dropped in."""
    stage = staged_install(tmp_path_factory)
    booted = BootedSystemd(tmp_path_factory.mktemp("systemd"), stage)
    try:
        booted.boot()
        # What `make install-activate` does after a real install.
        booted.run("systemd-sysusers", "/usr/local/lib/sysusers.d/oversipd.conf", check=True)
        booted.run("systemd-tmpfiles", "--create", "/usr/local/lib/tmpfiles.d/oversipd.conf", check=True)
        modules = booted.share / "modules.d"
        modules.mkdir(mode=0o755)
        (modules / "probe.py").write_text(PROBE)
        booted.write_file(CONF, service_conf(f"{SHARE_PATH}/modules.d"))
        booted.write_file(f"/etc/systemd/system/{UNIT}.d/test.conf", TEST_DROP_IN)
        booted.systemctl("daemon-reload")
        yield booted
    finally:
        booted.poweroff()


@pytest.fixture
def events(container: BootedSystemd) -> Iterator[Events]:
    path = container.share / "events"
    sink = Events(path)
    try:
        yield sink
    finally:
        container.systemctl("stop", UNIT, check=False)
        container.systemctl("reset-failed", UNIT, check=False)
        sink.sock.close()
        path.unlink()


def start(container: BootedSystemd, events: Events) -> list[dict[str, Any]]:
    """`systemctl start` (it returns once READY=1 came); the workers' on_started events."""
    container.systemctl("start", UNIT)
    return events.wait("on_started", WORKERS)


def main_pid(container: BootedSystemd) -> str:
    return container.unit_properties(UNIT, "MainPID")["MainPID"]


def test_installed_unit_verifies_inside(container: BootedSystemd) -> None:
    result = container.run("systemd-analyze", "verify", f"/usr/local/lib/systemd/system/{UNIT}")
    assert result.returncode == 0 and (result.stdout + result.stderr).strip() == "", result


def test_start_is_ready_once_every_worker_ran_on_started(container: BootedSystemd, events: Events) -> None:
    container.systemctl("start", UNIT)
    returned = time.monotonic_ns()  # one system-wide clock: no time namespace is involved
    started = events.wait("on_started", WORKERS)
    assert sorted(e["worker"] for e in started) == list(range(1, WORKERS + 1))
    assert all(e["t"] < returned for e in started), "READY=1 came before every on_started"
    shown = container.wait_unit(UNIT, ActiveState="active", SubState="running")
    status = container.unit_properties(UNIT, "StatusText", "MainPID")
    assert f"{WORKERS} of {WORKERS} worker(s) running" in status["StatusText"]
    assert container.run("cat", PID_FILE).stdout.strip() == status["MainPID"]
    assert shown["Result"] == "success"


def test_service_runs_as_its_own_user(container: BootedSystemd, events: Events) -> None:
    started = start(container, events)
    uid = container.run("id", "-u", "oversipd", check=True).stdout.strip()
    assert {(e["uid"], e["euid"]) for e in started} == {(int(uid), int(uid))}


def test_reload_runs_on_reload_everywhere_and_returns_to_active(container: BootedSystemd,
                                                                events: Events) -> None:
    start(container, events)
    container.systemctl("reload", UNIT)
    # systemd 252 lets `systemctl reload` return once `kill -HUP` ran, before
    # RELOADING=1 arrives: wait for the workers, then for the unit.
    reloaded = events.wait("on_reload", WORKERS)
    assert sorted(e["worker"] for e in reloaded) == list(range(1, WORKERS + 1))
    container.wait_unit(UNIT, ActiveState="active", SubState="running",
                        StatusText=f"{WORKERS} of {WORKERS} worker(s) running; 1 reload(s), 0 respawn(s)")


NEW_MODULE = '''
import oversipd
from oversipd import Logger, SystemCallbacks
from oversipd.testing import record


@SystemCallbacks.on_started
def started():
    record("new_started", generation=oversipd.process.generation)
    Logger("new").log_system_notice(f"new module started in generation {oversipd.process.generation}")
'''


def test_reload_with_a_new_drop_in_swaps_generations_with_the_main_pid_unchanged(container: BootedSystemd,
                                                                              events: Events) -> None:
    start(container, events)
    master = main_pid(container)
    new = container.share / "modules.d" / "new.py"
    new.write_text(NEW_MODULE)
    new.chmod(0o644)
    try:
        container.systemctl("reload", UNIT)
        started = events.wait("new_started", WORKERS)
        assert sorted((e["worker"], e["generation"]) for e in started) == [(w, 2) for w in range(1, WORKERS + 1)]
        container.wait_unit(UNIT, ActiveState="active", SubState="running",
                            StatusText=f"{WORKERS} of {WORKERS} worker(s) running; 1 reload(s), 0 respawn(s); "
                                       "generation 2")
    finally:
        new.unlink()
    assert main_pid(container) == master
    assert sorted((e["worker"], e["error"]) for e in events.find("on_terminated")) == [
        (w, False) for w in range(1, WORKERS + 1)]  # the old generation
    journal = container.journal(UNIT, "-o", "cat")
    assert "new module started in generation 2" in journal
    assert "reload done: generation 2 serves" in journal


def test_reload_after_an_upgrade_of_oversipd_runs_it_with_the_main_pid_unchanged(container: BootedSystemd,
                                                                                 events: Events) -> None:
    start(container, events)
    master = main_pid(container)
    site = container.share / "site"
    install_upgraded_core(site)
    try:
        container.systemctl("reload", UNIT)
        started = events.wait("on_started", 2 * WORKERS)[WORKERS:]
        assert sorted(e["worker"] for e in started) == list(range(1, WORKERS + 1))
        container.wait_unit(UNIT, ActiveState="active", SubState="running",
                            StatusText=f"{WORKERS} of {WORKERS} worker(s) running; 1 reload(s), 0 respawn(s); "
                                       "generation 2")
    finally:
        shutil.rmtree(site)
    assert main_pid(container) == master
    assert container.run("cat", PID_FILE).stdout.strip() == master
    assert sorted((e["worker"], e["error"]) for e in events.find("on_terminated")) == [
        (w, False) for w in range(1, WORKERS + 1)]  # the old generation
    journal = container.journal(UNIT, "-o", "cat")
    assert f"running oversipd {NEW_VERSION} after the exec (pid {master})" in journal
    assert "reload done: generation 2 serves" in journal


def test_rejected_reload_returns_the_unit_to_active(container: BootedSystemd, events: Events) -> None:
    start(container, events)
    good = container.run("cat", CONF, check=True).stdout
    container.write_file(CONF, good + "\n[core]\n")  # a table defined twice: invalid TOML
    try:
        container.systemctl("reload", UNIT)
        container.wait_unit(UNIT, ActiveState="active", SubState="running",
                            StatusText="reload rejected: invalid configuration; running on the old one")
    finally:
        container.write_file(CONF, good)
    assert events.find("on_reload") == []
    assert "reload refused, keeping the old configuration" in container.journal(UNIT, "-p", "err")


def test_killed_worker_is_respawned_and_the_unit_stays_active(container: BootedSystemd,
                                                              events: Events) -> None:
    started = start(container, events)
    master = main_pid(container)
    victim = next(e for e in started if e["worker"] == 1)
    container.run("kill", "-KILL", str(victim["pid"]), check=True)
    events.wait("on_started", 2, worker=1)  # the replacement, in the same slot
    shown = container.wait_unit(UNIT, ActiveState="active", SubState="running")
    assert shown["Result"] == "success"
    properties = container.unit_properties(UNIT, "MainPID", "NRestarts")
    assert properties == {"MainPID": master, "NRestarts": "0"}


def test_stop_runs_on_terminated_false_in_every_worker(container: BootedSystemd, events: Events) -> None:
    start(container, events)
    container.systemctl("stop", UNIT)
    terminated = events.wait("on_terminated", WORKERS)
    assert sorted((e["worker"], e["error"]) for e in terminated) == [(w, False) for w in range(1, WORKERS + 1)]
    shown = container.wait_unit(UNIT, ActiveState="inactive")
    assert shown["Result"] == "success"
    assert container.run("test", "-e", PID_FILE).returncode != 0, "the pid file outlived the master"


def test_launcher_fatal_fails_the_unit_with_the_message_in_its_journal(container: BootedSystemd,
                                                                        events: Events) -> None:
    fatal = container.share / "modules.d" / "fatal.py"
    fatal.write_text(FATAL)
    try:
        result = container.systemctl("start", UNIT, check=False)
        assert result.returncode != 0
        shown = container.wait_unit(UNIT, ActiveState="failed")
        assert shown["Result"] == "exit-code"
    finally:
        fatal.unlink()
    assert container.unit_properties(UNIT, "NRestarts")["NRestarts"] == "0"  # RestartPreventExitStatus
    crit = container.journal(UNIT, "-p", "crit", "-o", "cat")
    assert FATAL_MESSAGE in crit
    assert "exiting with error status" in crit
    assert "probe started" not in crit  # WARN lines are not crit


def test_journal_lines_carry_their_priorities(container: BootedSystemd, events: Events) -> None:
    start(container, events)
    container.systemctl("stop", UNIT)
    entries = [json.loads(line) for line in container.journal(UNIT, "-o", "json").splitlines()]
    ours = [e for e in entries if e.get("_PID") != "1" and isinstance(e.get("MESSAGE"), str)]

    def priority_of(text: str) -> str:
        found = [e["PRIORITY"] for e in ours if text in e["MESSAGE"]]
        assert found, f"no journal line with {text!r}"
        return found[-1]

    assert priority_of("WARN: <probe> probe started") == "4"
    # The journal stamps the time itself: a line is `[process] LEVEL: <log_id> message`.
    assert any(e["MESSAGE"] == f"[master] NOTICE: <Master> ready: {WORKERS} worker(s) running" for e in ours)
    assert priority_of("NOTICE: <Master> ready:") == "5"
    assert priority_of("INFO: <Master> started") == "6"


def test_killed_master_is_restarted(container: BootedSystemd, events: Events) -> None:
    start(container, events)
    first = main_pid(container)
    container.run("kill", "-KILL", first, check=True)
    # KillMode=mixed: systemd SIGKILLs the orphaned workers, then restarts the unit.
    events.wait("on_started", 2 * WORKERS)
    container.wait_unit(UNIT, ActiveState="active", SubState="running", NRestarts="1")
    assert main_pid(container) != first


def test_control_commands_find_the_service(container: BootedSystemd, events: Events) -> None:
    start(container, events)
    status = container.run("oversipd", "status", "-c", CONF)
    assert status.returncode == 0, status
    assert f"master pid {main_pid(container)}" in status.stdout
    assert status.stdout.count("worker ") >= WORKERS
    stop = container.run("oversipd", "stop", "-c", CONF)
    assert stop.returncode == 0, stop
    events.wait("on_terminated", WORKERS, error=False)
    assert container.run("oversipd", "status", "-c", CONF).returncode == 3


def test_daemonized_master_logs_to_syslog(container: BootedSystemd, events: Events) -> None:
    conf = "/etc/oversipd/daemonized.conf"
    container.write_file(conf, service_conf(f"{SHARE_PATH}/modules.d", pid_file="/run/daemonized.pid"))
    env = ("env", f"{EVENTS_ENV}={SHARE_PATH}/events")
    started = container.run(*env, "oversipd", "run", "--daemonize", "-c", conf)
    assert started.returncode == 0, started
    events.wait("on_started", WORKERS)
    pid = container.run("cat", "/run/daemonized.pid", check=True).stdout.strip()
    stopped = container.run("oversipd", "stop", "-c", conf)
    assert stopped.returncode == 0, stopped
    lines = container.run("journalctl", "--no-pager", "-t", "oversipd", f"_PID={pid}", "-o", "json").stdout
    entries = [json.loads(line) for line in lines.splitlines()]
    ready = [e for e in entries if "NOTICE: <Master> ready:" in e["MESSAGE"]]
    assert ready, entries
    assert ready[0]["MESSAGE"] == f"[master] NOTICE: <Master> ready: {WORKERS} worker(s) running"
    assert (ready[0]["PRIORITY"], ready[0]["SYSLOG_FACILITY"], ready[0]["SYSLOG_PID"]) == ("5", "3", pid)
