"""SPEC §2/§5 — crashes: respawn in the slot, back-off, crash loop, start-up failure, orphans, timeouts."""

import os
import signal

import psutil

from conftest import PROBE, module

# Worker `slot` of this module dies quickly (50 ms after its on_started)
# once the test creates the file "crash" in the modules directory.
CRASHER = module('''
    FLAG = os.path.join(os.path.dirname(__file__), "crash")

    @SystemCallbacks.on_started
    def started():
        record("started")
        if os.path.exists(FLAG):
            asyncio.get_running_loop().call_later(0.05, os._exit, 7)
''')

# A server script whose SIGUSR1 handler blocks the reactor for good.
BLOCKER = module('''
    @SystemCallbacks.on_started
    def started():
        record("started")

    @SystemEvents.on_user_reload
    def block_the_reactor():
        time.sleep(600)
''')


def test_a_killed_worker_is_respawned_in_its_slot(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    victim = daemon.worker_pids()[1]
    os.kill(victim, signal.SIGKILL)
    replacement = daemon.wait_events("started", count=2, worker=1)[-1]
    assert replacement["pid"] != victim
    assert f"worker 1 (pid {victim}) killed by SIGKILL" in daemon.wait_log("killed by SIGKILL")[0]
    assert not daemon.find("terminated")  # an uncatchable signal runs nothing
    assert daemon.stop() == 0


def test_quick_deaths_back_off_and_end_in_a_crash_loop(oversipd_daemon):
    daemon = oversipd_daemon(modules={"crasher": CRASHER}, core={"respawn_limit": 4})
    (daemon.modules_dir / "crash").touch()
    os.kill(daemon.worker_pids()[1], signal.SIGKILL)
    assert daemon.wait_exit() == 1
    assert any("CRIT:" in line for line in daemon.log_lines("crash loop"))
    starts = [e["t"] / 1e9 for e in daemon.find("started")]
    assert len(starts) == 4  # the first worker and three quick respawns
    gaps = [b - a for a, b in zip(starts[1:], starts[2:])]
    # Respawned at once, then after 0.1 s, then after 0.2 s (doubling).
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2


def test_respawn_limit_zero_never_gives_up(oversipd_daemon):
    daemon = oversipd_daemon(modules={"crasher": CRASHER}, core={"respawn_limit": 0})
    (daemon.modules_dir / "crash").touch()
    os.kill(daemon.worker_pids()[1], signal.SIGKILL)
    daemon.wait_events("started", count=7)  # six quick deaths in a row, still respawning
    (daemon.modules_dir / "crash").unlink()
    assert daemon.stop() == 0


def test_a_worker_dying_during_start_up_fails_the_start(oversipd_daemon):
    source = module('''
        @SystemCallbacks.on_started
        def started():
            if oversipd.process.worker_id == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            record("started")

        @SystemCallbacks.on_terminated
        def terminated(error):
            record("terminated", error=error)
    ''')
    daemon = oversipd_daemon(modules={"dies": source}, core={"workers": 2}, start=False)
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    assert "start-up failed" in daemon.log_text()
    assert [(e["worker"], e["error"]) for e in daemon.find("terminated")] == [(1, True)]


def test_when_the_master_disappears_every_worker_terminates_with_error(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 3})
    daemon.wait_events("started", count=3)
    workers = [psutil.Process(pid) for pid in daemon.worker_pids().values()]
    daemon.signal(signal.SIGKILL)
    ended = daemon.wait_events("terminated", count=3)
    assert sorted((e["worker"], e["error"]) for e in ended) == [(1, True), (2, True), (3, True)]
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"orphans left: {alive}"


def test_an_unresponsive_reactor_is_aborted_with_a_traceback_and_respawned(oversipd_daemon):
    daemon = oversipd_daemon(server_script=BLOCKER, core={"worker_timeout": 1.0})
    first = daemon.worker_pids()[1]
    daemon.signal(signal.SIGUSR1)
    daemon.wait_log("reactor unresponsive")
    again = daemon.wait_events("started", count=2)[-1]
    assert again["worker"] == 1 and again["pid"] != first
    # The master logs the death once the replacement is forked: wait for the line.
    daemon.wait_log(f"(pid {first}) killed by")
    log = daemon.log_text()
    assert "block_the_reactor" in log  # faulthandler's dump of the stuck stack
    assert f"worker 1 (pid {first}) killed by SIGABRT" in log
    assert daemon.stop() == 0


def test_an_exception_escaping_the_reactor_ends_the_worker_with_error(oversipd_daemon):
    source = module('''
        @SystemCallbacks.on_started
        def started():
            record("started")

        @SystemEvents.on_user_reload
        def escape():
            def boom():
                raise SystemExit("out of the loop")
            asyncio.get_running_loop().call_soon(boom)

        @SystemCallbacks.on_terminated
        def terminated(error):
            record("terminated", error=error)
    ''')
    daemon = oversipd_daemon(server_script=source)
    first = daemon.worker_pids()[1]
    daemon.signal(signal.SIGUSR1)
    [ended] = daemon.wait_events("terminated")
    assert (ended["pid"], ended["error"]) == (first, True)
    daemon.wait_events("started", count=2)  # respawned
    assert daemon.stop() == 0


def test_a_reload_applies_a_new_worker_timeout(oversipd_daemon):
    daemon = oversipd_daemon(server_script=BLOCKER, core={"worker_timeout": 0})
    daemon.core = {"worker_timeout": 1.0}
    daemon.write_conf()
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("reload done")
    daemon.signal(signal.SIGUSR1)
    daemon.wait_log("reactor unresponsive for 1 s")
    daemon.wait_events("started", count=2)
    assert daemon.stop() == 0
