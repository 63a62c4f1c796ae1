"""SPEC §5, "Code changes on reload": an upgraded oversipd runs after a reload, the master's PID unchanged.

An upgrade is made real: a copy of the oversipd package whose version is
99.0, with its dist-info, appears on PYTHONPATH (ahead of the installed
one) while the daemon runs, as `pip install -U oversipd` would put it.
The new generation's workers report the core version they run.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path


import oversipd
from oversipd.pidfile import pid_alive, read_pid
from conftest import PROBE, module
from listen_helpers import SERVING_SCRIPT, STATUS_SOURCE, free_port, listen_table
from test_core_generations import (REFUSED, assert_fatal_start_kept_generation_1, assert_no_client_refused,
                                   ready_after, swap_done)
from test_listen_respawn import ECHO_SOURCE, TcpClient, UdpClient

NEW_VERSION = "99.0"

# Which core each worker runs, and under which master.
CORE_PROBE = module('''
    @SystemCallbacks.on_started
    def started():
        record("core", version=oversipd.__version__, generation=oversipd.process.generation, ppid=os.getppid())
''')


def install_upgraded_core(site: Path, version: str = NEW_VERSION, appended: str = "") -> None:
    """Put oversipd `version` (a copy of this one, `appended` to its __init__) first on the daemon's sys.path."""
    site.mkdir(exist_ok=True)
    package = site / "oversipd"
    shutil.copytree(Path(oversipd.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    init = package / "__init__.py"
    text = init.read_text().replace(f'__version__ = "{oversipd.__version__}"', f'__version__ = "{version}"')
    assert f'__version__ = "{version}"' in text
    init.write_text(text + appended)
    metadata = site / f"oversipd-{version}.dist-info" / "METADATA"
    metadata.parent.mkdir()
    metadata.write_text(f"Metadata-Version: 2.1\nName: oversipd\nVersion: {version}\n\n")


def daemon_with_site(oversipd_daemon, tmp_path: Path, **options):
    site = tmp_path / "site"
    site.mkdir()
    return oversipd_daemon(env={"PYTHONPATH": str(site)}, **options), site


def assert_gone(pids) -> None:
    """No orphan: none of `pids` runs (a zombie left to a subreaper does not)."""
    assert [pid for pid in pids if pid_alive(pid)] == []


def test_hup_after_an_upgrade_runs_the_new_core_with_the_same_master_pid_and_no_client_refused(
        oversipd_daemon, tmp_path):
    tcp_port, udp_port = free_port("tcp"), free_port("udp")
    daemon, site = daemon_with_site(
        oversipd_daemon, tmp_path,
        modules={"status": STATUS_SOURCE, "echo": ECHO_SOURCE, "probe": PROBE, "core": CORE_PROBE},
        server_script=SERVING_SCRIPT, core={"workers": 2, "log_level": "info", "pid_file": "oversipd.pid"},
        extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{tcp_port}"),
                      "listen.echo": listen_table(f"udp://127.0.0.1:{udp_port}")})
    old = {e["pid"] for e in daemon.wait_events("core", count=2)}
    assert {e["version"] for e in daemon.find("core")} == {oversipd.__version__}
    tcp, udp = TcpClient(tcp_port), UdpClient(udp_port)
    tcp.start()
    udp.start()

    install_upgraded_core(site)
    before = daemon.mark()
    daemon.signal(signal.SIGHUP)
    new = daemon.wait_events("core", count=2, since=before)
    swap_done(daemon, 2, since=before)
    assert sorted(e["worker"] for e in new) == [1, 2]
    assert {(e["version"], e["generation"], e["ppid"]) for e in new} == {(NEW_VERSION, 2, daemon.pid)}
    terminated = daemon.wait_events("terminated", count=2, since=before)
    assert {(e["pid"], e["error"]) for e in terminated} == {(pid, False) for pid in old}
    [line] = daemon.log_lines(f"running oversipd {NEW_VERSION} after the exec (pid {daemon.pid})")
    assert not daemon.log_lines("a restart is needed")
    new_pids = {e["pid"] for e in new}
    assert_no_client_refused(tcp, udp, new_pids, "exec on the upgraded core")
    ready = ready_after(daemon, before)
    assert f"MAINPID={daemon.pid}" in ready and any("generation 2" in line for line in ready), ready
    pid_file = daemon.directory / "oversipd.pid"
    assert pid_file.read_text() == f"{daemon.pid}\n"  # the same file, still locked by the master
    status = daemon.run_command("status", "-c", str(daemon.conf_path))
    assert status.returncode == 0 and str(daemon.pid) in status.stdout, status
    assert [line.split()[:3] for line in status.stdout.splitlines() if line.startswith("worker")] == [
        ["worker", "1", "2"], ["worker", "2", "2"]], status.stdout
    # Now up to date: the next HUP reloads in place, in the new core.
    daemon.reload()
    assert {e["pid"] for e in daemon.wait_events("reload", count=2, since=before)} == new_pids
    stop = daemon.run_command("stop", "-c", str(daemon.conf_path))  # through the pid file
    assert stop.returncode == 0, stop
    assert daemon.wait_exit() == 0
    assert_gone(old | new_pids)
    assert not pid_file.exists()
    assert "Traceback" not in daemon.log_text()


def test_an_upgraded_core_that_fails_its_check_is_refused_and_the_old_generation_serves_on(
        oversipd_daemon, tmp_path):
    daemon, site = daemon_with_site(oversipd_daemon, tmp_path, modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    workers = daemon.worker_pids()
    install_upgraded_core(site, appended='\nraise ImportError("this upgrade is broken")\n')
    before = daemon.mark()
    daemon.signal(signal.SIGHUP)
    ready = ready_after(daemon, before)
    assert any(line.startswith(f"STATUS={REFUSED}") for line in ready), ready
    [line] = daemon.wait_log("ERROR", since=before)
    assert REFUSED in line and "oversipd check with the upgraded core failed (exit status 1)" in line
    assert f"{site / 'oversipd' / '__init__.py'}, line" in line and "this upgrade is broken" in line
    assert daemon.running and daemon.worker_pids() == workers
    assert not daemon.find("terminated", since=before) and not daemon.find("started", since=before)
    assert daemon.stop() == 0
    assert len(daemon.log_lines("ERROR", since=before)) == 1 and "Traceback" not in daemon.log_text()


def test_sigterm_right_after_the_exec_stops_both_generations_cleanly(oversipd_daemon, tmp_path):
    daemon, site = daemon_with_site(oversipd_daemon, tmp_path, modules={"probe": PROBE, "core": CORE_PROBE},
                                    core={"workers": 2})
    old = {e["pid"] for e in daemon.wait_events("started", count=2)}
    install_upgraded_core(site)
    before = daemon.mark()
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("re-executing the master", since=before)
    daemon.signal(signal.SIGTERM)  # while the image is replaced, or just after: blocked, not lost
    assert daemon.wait_exit() == 0
    new = {e["pid"] for e in daemon.find("core", since=before)}
    terminated = [e["pid"] for e in daemon.find("terminated")]
    assert old <= set(terminated) and sorted(terminated) == sorted(set(terminated))  # each worker once
    assert set(terminated) <= old | new
    assert_gone(old | new)


def test_a_new_generation_that_fails_on_the_upgraded_core_leaves_the_old_one_serving(oversipd_daemon, tmp_path):
    # The upgraded core's first generation calls Launcher.fatal: the old
    # workers serve on but, their code gone from the master, are not respawned.
    picky = module(f'''
        @SystemCallbacks.on_started
        def started():
            if oversipd.__version__ == "{NEW_VERSION}":
                Launcher.fatal("this module does not run on oversipd {NEW_VERSION}")
    ''')
    daemon, site = daemon_with_site(oversipd_daemon, tmp_path, modules={"probe": PROBE, "picky": picky},
                                    core={"workers": 2})
    daemon.wait_events("started", count=2)
    workers = daemon.worker_pids()
    install_upgraded_core(site)
    before = daemon.mark()
    daemon.signal(signal.SIGHUP)
    assert_fatal_start_kept_generation_1(daemon, before, workers)
    killed = daemon.mark()
    daemon.kill_worker(1)
    daemon.wait_log("not respawned", since=killed)
    assert daemon.running and list(daemon.wait_workers(1)) == [2]
    assert daemon.stop() == 0
    assert_gone(workers.values())


def test_a_hup_during_the_check_of_the_new_core_is_one_more_reload_after_the_swap(oversipd_daemon, tmp_path):
    daemon, site = daemon_with_site(oversipd_daemon, tmp_path, modules={"probe": PROBE, "core": CORE_PROBE},
                                    core={"workers": 2})
    daemon.wait_events("started", count=2)
    install_upgraded_core(site)
    before = daemon.mark()
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("checking it with its own `oversipd check`", since=before)
    daemon.signal(signal.SIGHUP)  # handed over with the rest: not lost in the exec
    new = {e["pid"] for e in daemon.wait_events("core", count=2, since=before)}
    swap_done(daemon, 2, since=before)
    assert {e["pid"] for e in daemon.wait_events("reload", count=2, since=before)} == new  # in place
    assert len(daemon.log_lines("re-executing the master")) == 1
    assert daemon.stop() == 0


def test_a_daemonized_master_reexecutes_with_its_pid_file_and_detached_stdio(oversipd_daemon, tmp_path):
    site = tmp_path / "site"
    daemon = oversipd_daemon(start=False, env={"PYTHONPATH": str(site)}, modules={"core": CORE_PROBE},
                             core={"workers": 2, "pid_file": "oversipd.pid"})
    conf = str(daemon.conf_path)
    assert daemon.run_command("run", "-c", conf, "--daemonize").returncode == 0
    pid = read_pid(daemon.directory / "oversipd.pid")
    try:
        old = {e["pid"] for e in daemon.wait_events("core", count=2)}
        install_upgraded_core(site)
        before = daemon.mark()
        assert daemon.run_command("reload", "-c", conf).returncode == 0
        new = daemon.wait_events("core", count=2, since=before)
        assert {(e["version"], e["generation"], e["ppid"]) for e in new} == {(NEW_VERSION, 2, pid)}
        daemon.wait_notification("READY=1", since=before)
        assert read_pid(daemon.directory / "oversipd.pid") == pid
        for fd in (0, 1, 2):  # still detached: python-daemon's /dev/null, kept across the exec
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert daemon.run_command("stop", "-c", conf).returncode == 0
        assert_gone(old | {e["pid"] for e in new} | {pid})
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


# Each worker answers OPTIONS with the core version and the worker slot it runs.
VERSION_SCRIPT = '''
import oversipd
from oversipd import SipEvents

@SipEvents.on_request
def on_request(request):
    request.reply(200, f"core {oversipd.__version__} worker {oversipd.process.worker_id}")
'''


def test_sip_over_udp_is_served_by_the_upgraded_core_on_the_same_per_slot_sockets(oversipd_daemon, tmp_path):
    from sip_helpers import UdpClient as SipClient, sip_daemon

    site = tmp_path / "site"
    site.mkdir()
    server = sip_daemon(oversipd_daemon, script=VERSION_SCRIPT, workers=2, env={"PYTHONPATH": str(site)},
                        core={"pid_file": "oversipd.pid"})
    clients = [SipClient(server) for _ in range(8)]
    slot_of = {}
    for client in clients:
        client.request("OPTIONS")
        reason = client.response().reason
        assert reason.startswith(f"core {oversipd.__version__} worker ")
        slot_of[client] = reason.rsplit(" ", 1)[1]

    install_upgraded_core(site)
    before = server.daemon.mark()
    server.daemon.signal(signal.SIGHUP)
    swap_done(server.daemon, 2, since=before)
    for client in clients:   # each source still lands on its slot's socket, now read by the new core
        client.request("OPTIONS")
        assert client.response().reason == f"core {NEW_VERSION} worker {slot_of[client]}"
    assert server.daemon.stop() == 0
