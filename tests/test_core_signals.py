"""SPEC §5 — signals to the master."""

import os
import signal

import pytest

from conftest import PROBE, module


def send_and_wait(daemon, signum, log_text):
    """Send one signal and wait until the master logged it: identical pending
    signals are merged by the kernel, so each must be handled before the next."""
    seen = len(daemon.log_lines(log_text))
    daemon.signal(signum)
    daemon.wait_log(log_text, count=seen + 1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_term_int_quit_stop_gracefully(oversipd_daemon, signum):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    daemon.signal(signum)
    assert daemon.wait_exit() == 0
    assert sorted((e["worker"], e["error"]) for e in daemon.find("terminated")) == [(1, False), (2, False)]


def test_ctrl_c_on_the_terminal_stops_each_worker_exactly_once(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    os.killpg(daemon.pid, signal.SIGINT)  # what the terminal does: the whole process group
    assert daemon.wait_exit() == 0
    assert sorted((e["worker"], e["error"]) for e in daemon.find("terminated")) == [(1, False), (2, False)]


def test_graceful_timeout_bounds_the_stop(oversipd_daemon):
    source = module('''
        @SystemCallbacks.on_terminated
        def never_finishes(error):
            record("stuck")
            time.sleep(600)
    ''')
    daemon = oversipd_daemon(modules={"stuck": source}, core={"graceful_timeout": 0.5})
    daemon.signal(signal.SIGTERM)
    daemon.wait_events("stuck")
    assert daemon.wait_exit() == 0
    assert "still running after graceful_timeout; SIGKILL" in daemon.log_text()


def test_hup_rereads_the_configuration_and_every_worker_reloads(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2}, settings={"probe": {"v": 1}})
    daemon.wait_events("started", count=2)
    daemon.settings = {"probe": {"v": 2}}
    daemon.write_conf()
    daemon.signal(signal.SIGHUP)
    reloads = daemon.wait_events("reload", count=2)
    assert sorted(e["worker"] for e in reloads) == [1, 2]
    assert all(e["settings"] == {"v": 2} for e in reloads)
    daemon.wait_notification("RELOADING=1")
    daemon.wait_notification("READY=1", count=2)
    assert daemon.stop() == 0


def test_a_broken_configuration_on_hup_keeps_the_old_one(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, settings={"probe": {"v": 1}})
    daemon.write_conf("[core]\nworkers = 'many'\n")
    daemon.signal(signal.SIGHUP)
    [line] = daemon.wait_log("reload refused")
    assert str(daemon.conf_path) in line and "core.workers" in line
    daemon.wait_notification("READY=1", count=2)  # systemd is told the reload is over
    assert not daemon.find("reload")
    daemon.settings = {"probe": {"v": 3}}
    daemon.write_conf()
    daemon.signal(signal.SIGHUP)
    [reload] = daemon.wait_events("reload")
    assert reload["settings"] == {"v": 3}
    assert daemon.stop() == 0


def test_hups_during_a_reload_coalesce_into_exactly_one_more(oversipd_daemon):
    source = module('''
        GATE = os.path.join(os.path.dirname(__file__), "gate")

        @SystemCallbacks.on_reload
        async def reloaded():
            record("reload_begin")
            while not os.path.exists(GATE):   # the test opens the gate
                await asyncio.sleep(0.01)
            record("reload_end")

        @SystemEvents.on_user_reload
        def user_reload():
            record("user_reload")
    ''')
    daemon = oversipd_daemon(modules={"slow": source})
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("reload_begin")
    for sent in range(1, 4):
        # One at a time: the kernel merges identical signals still pending.
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("another reload will follow", count=sent)
    (daemon.modules_dir / "gate").touch()
    daemon.wait_events("reload_end", count=2)
    # The worker serves the master's messages in order: had a third reload
    # been asked for, it would run before this user reload.
    daemon.signal(signal.SIGUSR1)
    daemon.wait_events("user_reload")
    assert len(daemon.find("reload_begin")) == 2
    assert daemon.stop() == 0


def test_a_changed_worker_count_applies_on_hup(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 1})
    daemon.core = {"workers": 3}
    daemon.write_conf()
    daemon.signal(signal.SIGHUP)
    assert sorted(e["worker"] for e in daemon.wait_events("started", count=3)) == [1, 2, 3]
    daemon.core = {"workers": 2}
    daemon.write_conf()
    daemon.signal(signal.SIGHUP)
    [gone] = daemon.wait_events("terminated")
    assert (gone["worker"], gone["error"]) == (3, False)
    assert daemon.stop() == 0


def test_ttin_counts_survive_a_hup_that_leaves_workers_alone(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 1})
    daemon.signal(signal.SIGTTIN)
    daemon.wait_events("started", count=2)
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("reload", count=2)
    assert sorted(daemon.worker_pids()) == [1, 2]
    assert daemon.stop() == 0


def test_usr1_runs_on_user_reload_in_every_worker(oversipd_daemon):
    server = module('''
        @SystemEvents.on_user_reload
        def user_reload():
            record("user_reload")
    ''')
    daemon = oversipd_daemon(modules={"probe": PROBE}, server_script=server, core={"workers": 2})
    daemon.signal(signal.SIGUSR1)
    assert sorted(e["worker"] for e in daemon.wait_events("user_reload", count=2)) == [1, 2]
    assert not daemon.find("reload")
    assert daemon.stop() == 0


def test_each_ttin_adds_a_worker_and_each_ttou_removes_one(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 1})
    send_and_wait(daemon, signal.SIGTTIN, "SIGTTIN: 2 worker(s)")
    send_and_wait(daemon, signal.SIGTTIN, "SIGTTIN: 3 worker(s)")
    assert sorted(e["worker"] for e in daemon.wait_events("started", count=3)) == [1, 2, 3]
    send_and_wait(daemon, signal.SIGTTOU, "SIGTTOU: 2 worker(s)")
    [removed] = daemon.wait_events("terminated")
    assert (removed["worker"], removed["error"]) == (3, False)
    send_and_wait(daemon, signal.SIGTTOU, "SIGTTOU: 1 worker(s)")
    daemon.wait_events("terminated", count=2)
    daemon.wait_log("exited with status 0", count=2)  # reaped by the master
    # Never fewer than one.
    send_and_wait(daemon, signal.SIGTTOU, "SIGTTOU: already at one worker")
    assert sorted(daemon.worker_pids()) == [1]
    assert len(daemon.find("started")) == 3  # the removed workers were not respawned
    assert daemon.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGWINCH, signal.SIGALRM, signal.SIGPIPE])
def test_other_signals_are_logged_and_ignored(oversipd_daemon, signum):
    daemon = oversipd_daemon(modules={"probe": PROBE})
    daemon.signal(signum)
    daemon.wait_log(f"ignoring {signal.Signals(signum).name}")
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
    assert len(daemon.find("started")) == 1


def test_usr2_starts_a_new_generation_of_workers(oversipd_daemon):
    # SPEC §5; the swap itself: test_core_generations.py.
    daemon = oversipd_daemon(modules={"probe": PROBE})
    [old] = daemon.wait_events("started")
    daemon.signal(signal.SIGUSR2)
    daemon.wait_log("reload done: generation 2 serves")
    [_, new] = daemon.find("started")
    assert new["pid"] != old["pid"]
    assert [(e["pid"], e["error"]) for e in daemon.find("terminated")] == [(old["pid"], False)]
    assert daemon.stop() == 0


def test_sigterm_to_one_worker_stops_it_gracefully_and_it_is_respawned(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    old = daemon.worker_pids()[2]
    os.kill(old, signal.SIGTERM)
    [ended] = daemon.wait_events("terminated")
    assert (ended["worker"], ended["error"], ended["pid"]) == (2, False, old)
    again = daemon.wait_events("started", count=2, worker=2)[-1]
    assert again["pid"] != old
    assert daemon.stop() == 0
