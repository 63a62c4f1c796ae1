"""SPEC §1 — processes: one master imports and initializes, N workers run reactors."""

import psutil

from conftest import PROBE, module


def test_master_imports_modules_once_then_forks_the_workers(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 3})
    started = daemon.wait_events("started", count=3)
    imported = daemon.find("imported")
    assert [(e["role"], e["worker"], e["pid"]) for e in imported] == [("master", None, daemon.pid)]
    assert sorted(e["worker"] for e in started) == [1, 2, 3]
    assert {e["role"] for e in started} == {"worker"}
    children = {child.pid for child in psutil.Process(daemon.pid).children()}
    assert {e["pid"] for e in started} == children
    assert daemon.stop() == 0


def test_on_initialize_runs_once_in_the_master_before_any_fork(oversipd_daemon):
    server = module('''
        @SystemEvents.on_initialize
        def initialize():
            record("initialize", children=len(__import__("psutil").Process().children()))
    ''')
    daemon = oversipd_daemon(modules={"probe": PROBE}, server_script=server, core={"workers": 2})
    started = daemon.wait_events("started", count=2)
    [initialize] = daemon.find("initialize")
    assert initialize["role"] == "master" and initialize["children"] == 0
    assert all(initialize["t"] < e["t"] for e in started)
    daemon.signal(1)  # SIGHUP: on_initialize is not run again
    daemon.wait_events("reload", count=2)
    assert len(daemon.find("initialize")) == 1
    assert daemon.stop() == 0


def test_every_callback_runs_inside_the_workers_running_selector_event_loop(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    assert {e["loop"] for e in daemon.wait_events("started", count=2)} == {"_UnixSelectorEventLoop"}
    assert daemon.stop() == 0


def test_process_titles_name_the_master_config_and_each_worker_slot(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    master_title = " ".join(psutil.Process(daemon.pid).cmdline()).strip()
    assert master_title == f"oversipd: master [{daemon.conf_path}]"
    assert sorted(daemon.worker_pids()) == [1, 2]
    assert daemon.stop() == 0


def test_role_and_worker_id_tell_each_process_what_it_is(oversipd_daemon):
    source = module('''
        record("top", role=oversipd.process.role, worker_id=oversipd.process.worker_id)
        @SystemCallbacks.on_started
        def started():
            record("in_worker", role=oversipd.process.role, worker_id=oversipd.process.worker_id)
    ''')
    daemon = oversipd_daemon(modules={"roles": source}, core={"workers": 2})
    workers = daemon.wait_events("in_worker", count=2)
    assert [(e["role"], e["worker_id"]) for e in daemon.find("top")] == [("master", None)]
    assert sorted((e["role"], e["worker_id"]) for e in workers) == [("worker", 1), ("worker", 2)]
    assert daemon.stop() == 0


def test_an_idle_master_sleeps(oversipd_daemon):
    """No sleep-polling: over an idle window the master blocks in select()."""
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2, "worker_timeout": 30.0})
    daemon.wait_events("started", count=2)
    master = psutil.Process(daemon.pid)
    before = master.num_ctx_switches().voluntary
    cpu_before = sum(master.cpu_times()[:2])
    psutil.wait_procs([master], timeout=2.0)  # a measurement window, not a wait for an event
    woke = master.num_ctx_switches().voluntary - before
    cpu = sum(master.cpu_times()[:2]) - cpu_before
    assert woke <= 2, f"the idle master woke {woke} times in 2 s"
    assert cpu < 0.05
    assert daemon.stop() == 0
