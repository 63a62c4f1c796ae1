"""SPEC §5, "Code changes on reload": a new generation of workers on new module code, the master's PID unchanged."""

from __future__ import annotations

import os
import signal
import textwrap
import time

import pytest

import oversipd
from conftest import PROBE, module
from listen_helpers import SERVING_SCRIPT, STATUS_SOURCE, free_port, listen_table
from test_listen_respawn import ECHO_SOURCE, TcpClient, UdpClient

# A module that says which generation's code it is, in every worker it starts in.
NEW_MODULE = module('''
    @SystemCallbacks.on_started
    def started():
        record("new_started", generation=oversipd.process.generation, ppid=os.getppid())
''')

# on_started of the new generation waits for the test's go-ahead (a file),
# so that the test can act while both generations run.
SLOW_MODULE = module('''
    @SystemCallbacks.on_started
    async def started():
        record("slow_started", generation=oversipd.process.generation)
        while not os.path.exists(os.environ["OVERSIPD_TEST_GO"]):
            await asyncio.sleep(0.02)
''')

REFUSED = "reload refused: the new module code failed its check"
NEW_GENERATION_FAILED = "STATUS=reload failed: the new generation did not start; generation 1 serves on"


def versioned(version: int) -> str:
    return module(f'''
        @SystemCallbacks.on_started
        def started():
            record("version", v={version}, generation=oversipd.process.generation)
    ''')


def drop_in(daemon, name: str, source: str) -> None:
    path = daemon.modules_dir / f"{name}.py"
    path.write_text(source)
    path.chmod(0o644)


def ready_after(daemon, mark) -> list[str]:
    """The first READY=1 message (its lines) that came after `mark`."""
    daemon.wait_notification("READY=1", since=mark)
    with daemon.notifications.changed:
        return next(m for m in daemon.notifications.items[mark.notifications:] if "READY=1" in m)


def swap_done(daemon, generation: int, since=None) -> None:
    """Wait for the end of the swap that made `generation` serve."""
    daemon.wait_log(f"reload done: generation {generation} serves", since=since)


def assert_fatal_start_kept_generation_1(daemon, before, workers: dict) -> None:
    """A Launcher.fatal in the new generation's on_started: READY says so, CRIT names it, generation 1 serves on."""
    ready = ready_after(daemon, before)
    assert NEW_GENERATION_FAILED in ready
    [crit] = daemon.wait_log("generation 1 stays in service", since=before)
    assert "CRIT" in crit and "Launcher.fatal was called" in crit
    assert daemon.running and daemon.worker_pids() == workers


def assert_no_client_refused(tcp: TcpClient, udp: UdpClient, new_pids: set[int], swap: str) -> None:
    """Stop the clients once the new workers answered them too; none refused, lost or hung over the swap."""
    # The clients keep going until the new generation answered them too
    # (their tallies have no change event: look every 50 ms, within a deadline).
    deadline = time.monotonic() + 15
    while not (new_pids & tcp.tally.pids and new_pids & udp.pids) and time.monotonic() < deadline:
        time.sleep(0.05)

    tcp.done.set()
    tcp.join(30)
    udp_lost = udp.finish()
    report = (f"TCP: {tcp.tally.answered} answered, {tcp.tally.refused} refused, {tcp.tally.lost} lost, "
              f"{tcp.tally.hung} hung | UDP: {udp.sent} sent, {udp_lost} lost")
    print(f"\n{swap}: {report}")
    assert (tcp.tally.refused, tcp.tally.lost, tcp.tally.hung, udp_lost) == (0, 0, 0, 0), report


def test_a_new_drop_in_starts_a_new_generation_and_no_client_is_refused(oversipd_daemon):
    tcp_port, udp_port = free_port("tcp"), free_port("udp")
    daemon = oversipd_daemon(
        modules={"status": STATUS_SOURCE, "echo": ECHO_SOURCE, "probe": PROBE}, server_script=SERVING_SCRIPT,
        core={"workers": 2, "log_level": "info"},
        extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{tcp_port}"),
                      "listen.echo": listen_table(f"udp://127.0.0.1:{udp_port}")})
    old = {e["pid"] for e in daemon.wait_events("serving", count=2)}
    tcp, udp = TcpClient(tcp_port), UdpClient(udp_port)
    tcp.start()
    udp.start()
    daemon.wait_events("started", count=2)

    drop_in(daemon, "new", NEW_MODULE)
    daemon.signal(signal.SIGHUP)
    new = daemon.wait_events("new_started", count=2)
    swap_done(daemon, 2)
    assert sorted(e["worker"] for e in new) == [1, 2]
    assert {(e["generation"], e["ppid"]) for e in new} == {(2, daemon.pid)}  # the same master
    terminated = daemon.wait_events("terminated", count=2)
    assert {(e["pid"], e["error"]) for e in terminated} == {(pid, False) for pid in old}
    assert_no_client_refused(tcp, udp, {e["pid"] for e in new}, "generation swap")
    daemon.wait_notification("RELOADING=1")
    daemon.wait_notification("READY=1", count=2)
    assert daemon.stop() == 0


def test_an_edited_module_runs_its_new_code_after_hup(oversipd_daemon):
    daemon = oversipd_daemon(modules={"versioned": versioned(1)})
    [first] = daemon.wait_events("version")
    drop_in(daemon, "versioned", versioned(2))
    daemon.signal(signal.SIGHUP)
    events = daemon.wait_events("version", count=2)
    assert (events[1]["v"], events[1]["generation"]) == (2, 2)
    assert events[1]["pid"] != first["pid"]
    daemon.wait_log("versioned.py changed: imported again")
    assert daemon.stop() == 0


def test_a_removed_module_is_unloaded_and_its_callbacks_no_longer_run(oversipd_daemon):
    gone = module('''
        @SystemCallbacks.on_reload
        def reloaded():
            record("gone_reload")

        @SystemCallbacks.on_terminated
        def terminated(error):
            record("gone_terminated", error=error)
    ''')
    daemon = oversipd_daemon(modules={"probe": PROBE, "gone": gone})
    daemon.wait_events("started")
    (daemon.modules_dir / "gone.py").unlink()
    daemon.signal(signal.SIGHUP)
    [line] = daemon.wait_log("module gone unloaded")
    assert str(daemon.modules_dir / "gone.py") in line
    swap_done(daemon, 2)
    assert [e["error"] for e in daemon.wait_events("gone_terminated")] == [False]  # in the old generation
    daemon.reload()  # the code is unchanged now: an in-place reload
    daemon.wait_events("reload")
    assert not daemon.find("gone_reload")
    assert daemon.stop() == 0


@pytest.mark.parametrize("source, error", [
    ("def broken(:\n", "SyntaxError"),
    ("import oversipd_no_such_module\n", "ModuleNotFoundError: No module named 'oversipd_no_such_module'"),
], ids=["syntax-error", "import-error"])
def test_new_code_that_fails_to_import_is_refused_and_the_old_generation_serves_on(
        oversipd_daemon, source, error):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    workers = daemon.worker_pids()
    before = daemon.mark()
    drop_in(daemon, "broken", source)
    daemon.signal(signal.SIGHUP)
    ready = ready_after(daemon, before)
    assert any(line.startswith(f"STATUS={REFUSED}") for line in ready), ready
    [line] = daemon.wait_log("ERROR", since=before)
    assert REFUSED in line and f"{daemon.modules_dir / 'broken.py'}, line 1: {error}" in line
    assert "Traceback" not in daemon.log_text()
    assert daemon.running and daemon.worker_pids() == workers
    assert not daemon.find("terminated") and not daemon.find("reload")
    # Fixed: the code is the one that runs, so the next HUP reloads in place.
    (daemon.modules_dir / "broken.py").unlink()
    daemon.reload()
    assert len(daemon.wait_events("reload", count=2)) == 2
    assert daemon.worker_pids() == workers
    assert daemon.stop() == 0
    assert len(daemon.log_lines("ERROR", since=before)) == 1 and "Traceback" not in daemon.log_text()


def test_a_fatal_on_started_in_the_new_generation_keeps_the_old_one(oversipd_daemon):
    fatal = module('''
        @SystemCallbacks.on_started
        def started():
            Launcher.fatal("new code: the database is unreachable")
    ''')
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    workers = daemon.worker_pids()
    before = daemon.mark()
    drop_in(daemon, "fatal", fatal)
    daemon.signal(signal.SIGHUP)
    assert_fatal_start_kept_generation_1(daemon, before, workers)
    # Only the new generation's workers ended (error=True: their generation failed).
    assert all(e["pid"] not in workers.values() for e in daemon.find("terminated"))
    # The old code is back in the master: a killed old worker is respawned on it.
    killed = daemon.mark()
    daemon.kill_worker(1)
    daemon.wait_events("started", worker=1, since=killed)
    daemon.wait_log("generation 1 worker 1", since=killed)
    assert not daemon.log_lines("Launcher.fatal", since=killed)
    assert daemon.stop() == 0


INITIALIZE_SCRIPT = module('''
    @SystemEvents.on_initialize
    def initialize():
        record("initialize", generation=oversipd.process.generation)
''')


def test_sigusr2_starts_a_new_generation_on_unchanged_code(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2}, server_script=INITIALIZE_SCRIPT)
    old = {e["pid"] for e in daemon.wait_events("started", count=2)}
    daemon.signal(signal.SIGUSR2)
    swap_done(daemon, 2)
    started = daemon.wait_events("started", count=4)[2:]
    assert sorted(e["worker"] for e in started) == [1, 2]
    terminated = daemon.wait_events("terminated", count=2)
    assert {(e["pid"], e["error"]) for e in terminated} == {(pid, False) for pid in old}
    initialized = daemon.wait_events("initialize", count=2)
    assert [(e["role"], e["generation"]) for e in initialized] == [("master", 1), ("master", 2)]
    assert daemon.log_lines("SIGUSR2: reloading with a new generation of workers")
    assert not daemon.log_lines("ignoring SIGUSR2")
    assert daemon.stop() == 0


def slow_swap(oversipd_daemon, workers: int = 1):
    """A daemon in the middle of a swap: the new generation is running its on_started."""
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False,
                             core={"workers": workers, "pid_file": "oversipd.pid"})
    go = daemon.directory / "go"
    daemon.env["OVERSIPD_TEST_GO"] = str(go)
    daemon.start()
    daemon.wait_events("started", count=workers)
    drop_in(daemon, "slow", SLOW_MODULE)
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("slow_started", count=workers)
    return daemon, go


def test_hups_during_a_swap_coalesce_into_one_more_reload(oversipd_daemon):
    daemon, go = slow_swap(oversipd_daemon)
    for sent in range(1, 4):
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("another reload will follow", count=sent)  # each handled before the next
    go.touch()
    swap_done(daemon, 2)
    daemon.wait_notification("READY=1", count=3)  # start, the swap, the one more reload
    [reload] = daemon.wait_events("reload")       # in place: the code did not change again
    assert daemon.find("slow_started")[-1]["generation"] == 2
    assert not daemon.log_lines("generation 3")
    assert daemon.stop() == 0


def test_status_shows_each_workers_generation_and_sigterm_during_a_swap_stops_both(oversipd_daemon):
    daemon, go = slow_swap(oversipd_daemon, workers=2)
    status = daemon.run_command("status", "-c", str(daemon.conf_path))
    rows = [line.split() for line in status.stdout.splitlines()[2:]]
    assert sorted((row[1], row[2]) for row in rows if row[0] == "worker") == [
        ("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")], status.stdout
    pids = {int(row[3]) for row in rows if row[0] == "worker"}

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    terminated = daemon.wait_events("terminated", count=len(pids))
    assert sorted(e["pid"] for e in terminated) == sorted(pids)  # each worker exactly once
    assert all(e["error"] is False for e in terminated)
    for pid in pids:  # no orphan
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_an_edited_server_script_whose_on_initialize_raises_keeps_the_old_generation(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, server_script="# nothing yet\n")
    daemon.wait_events("started")
    workers = daemon.worker_pids()
    before = daemon.mark()
    (daemon.directory / "server.py").write_text(textwrap.dedent('''
        from oversipd import SystemEvents

        @SystemEvents.on_initialize
        def initialize():
            raise RuntimeError("no database")
    '''))
    daemon.signal(signal.SIGHUP)
    ready = ready_after(daemon, before)
    assert NEW_GENERATION_FAILED in ready
    [crit] = daemon.wait_log("CRIT", since=before)
    assert f"on_initialize: {daemon.directory / 'server.py'}, line 6: RuntimeError: no database" in crit
    assert crit.endswith("generation 1 stays in service")
    assert daemon.running and daemon.worker_pids() == workers
    assert not daemon.find("started", since=before)  # no worker of generation 2 was forked
    assert daemon.stop() == 0


def test_an_old_worker_that_dies_during_a_swap_is_left_to_the_new_generation(oversipd_daemon):
    daemon, go = slow_swap(oversipd_daemon, workers=2)
    old = daemon.find("started", worker=1)[0]  # the first: generation 1's
    os.kill(old["pid"], signal.SIGKILL)
    daemon.wait_log(f"generation 1 worker 1 (pid {old['pid']}) killed by SIGKILL; a new generation is starting")
    go.touch()
    swap_done(daemon, 2)
    new = daemon.find("slow_started")
    assert sorted(e["worker"] for e in new) == [1, 2]
    # No worker of generation 1 was forked again: every probe start is of the first two or of the new ones.
    assert len(daemon.find("started")) == 4 and {e["pid"] for e in daemon.find("started")[2:]} == {
        e["pid"] for e in new}
    status = daemon.run_command("status", "-c", str(daemon.conf_path))
    assert [line.split()[:3] for line in status.stdout.splitlines()[3:]] == [
        ["worker", "1", "2"], ["worker", "2", "2"]], status.stdout
    assert daemon.stop() == 0


def test_an_upgraded_oversipd_runs_after_a_reload_without_a_restart(oversipd_daemon, tmp_path):
    # The core is not re-imported: the master re-executes itself on it
    # (reexec.py; tests/test_core_reexec.py has the real upgrade).  Here only
    # its metadata changed: one exec, not one per HUP, and a WARN that says so.
    site = tmp_path / "site"
    site.mkdir()
    daemon = oversipd_daemon(modules={"probe": PROBE}, env={"PYTHONPATH": str(site)})
    [first] = daemon.wait_events("started")
    metadata = site / "oversipd-99.0.dist-info" / "METADATA"
    metadata.parent.mkdir()
    metadata.write_text("Metadata-Version: 2.1\nName: oversipd\nVersion: 99.0\n\n")
    daemon.signal(signal.SIGHUP)
    swap_done(daemon, 2)
    [_, started] = daemon.wait_events("started", count=2)
    assert started["pid"] != first["pid"]
    [line] = daemon.log_lines(f"running oversipd {oversipd.__version__} after the exec (pid {daemon.pid})")
    [warn] = daemon.log_lines("reinstall oversipd")
    assert f"the installed metadata says oversipd 99.0, the code imported is {oversipd.__version__}" in warn
    assert not daemon.log_lines("a restart is needed")
    daemon.reload()
    daemon.wait_events("reload")  # nothing changed since the exec: in place
    assert len(daemon.log_lines("re-executing the master")) == 1
    assert daemon.stop() == 0


def test_sigusr2_imports_an_upgraded_pure_python_dependency_anew(oversipd_daemon, tmp_path):
    site = tmp_path / "site"
    (site / "ovs_test_dependency").mkdir(parents=True)
    dependency = site / "ovs_test_dependency" / "__init__.py"
    dependency.write_text("VALUE = 1\n")
    user = module('''
        import ovs_test_dependency

        @SystemCallbacks.on_started
        def started():
            record("value", value=ovs_test_dependency.VALUE, generation=oversipd.process.generation)
    ''')
    daemon = oversipd_daemon(modules={"user": user}, env={"PYTHONPATH": str(site)})
    daemon.wait_events("value")
    dependency.write_text("VALUE = 2\n")  # what `pip install -U` does; the fingerprint does not look there
    daemon.reload()
    assert not daemon.log_lines("generation 2")  # an in-place reload
    daemon.signal(signal.SIGUSR2)
    swap_done(daemon, 2)
    assert [(e["value"], e["generation"]) for e in daemon.wait_events("value", count=2)] == [(1, 1), (2, 2)]
    assert daemon.stop() == 0


def resource_module(version: int) -> str:
    """A module that declares a worker resource at import time, as a database module's add_pool does."""
    return module(f'''
        from oversipd import worker_resource

        def opened():
            record("opened", v={version}, generation=oversipd.process.generation)
            return {version}

        def closed(value):
            record("closed", v=value, generation=oversipd.process.generation)

        connection = worker_resource("connection", opened, closed)
    ''')


def test_a_new_generation_declares_and_opens_its_worker_resources_anew(oversipd_daemon):
    daemon = oversipd_daemon(modules={"db": resource_module(1)})
    daemon.wait_events("opened")
    drop_in(daemon, "db", resource_module(2))
    daemon.signal(signal.SIGHUP)
    swap_done(daemon, 2)
    opened = daemon.wait_events("opened", count=2)
    assert (opened[1]["v"], opened[1]["generation"]) == (2, 2)
    [closed] = daemon.wait_events("closed")
    assert (closed["v"], closed["generation"]) == (1, 1)
    assert daemon.stop() == 0


# The server script of generation `version`: an OPTIONS with "X-Hold" waits for
# the test's go-ahead file before its reply names the generation that answered.
def holding_script(version: int) -> str:
    return textwrap.dedent(f'''
        import asyncio, os
        import oversipd
        from oversipd import SipEvents
        from oversipd.testing import record

        @SipEvents.on_request
        async def on_request(request):
            if request.header("X-Hold"):
                record("holding", generation=oversipd.process.generation)
                while not os.path.exists(os.environ["OVERSIPD_TEST_GO"]):
                    await asyncio.sleep(0.02)
            request.reply(200, f"v{version} generation {{oversipd.process.generation}}")
    ''')


def test_an_old_worker_reads_no_new_request_but_answers_those_it_holds(oversipd_daemon, tmp_path):
    from sip_helpers import UdpClient, sip_daemon

    go = tmp_path / "go"
    server = sip_daemon(oversipd_daemon, script=holding_script(1), env={"OVERSIPD_TEST_GO": str(go)})
    daemon = server.daemon
    held = UdpClient(server)
    held.request("OPTIONS", extra="X-Hold: yes")
    daemon.wait_events("holding")
    (daemon.directory / "server.py").write_text(holding_script(2))
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("retiring: no new SIP request is read here")
    fresh = UdpClient(server)
    fresh.request("OPTIONS")
    assert fresh.response().reason == "v2 generation 2"   # the new generation reads new requests
    go.touch()
    assert held.response().reason == "v1 generation 1"    # the old one still answered its own
    swap_done(daemon, 2)
    assert daemon.stop() == 0
