"""SPEC §2 — SystemCallbacks and SystemEvents: where, when, in which order, and on failure."""

import signal

import pytest

from conftest import PROBE, module, workers_of

ORDERED = module('''
    def make(name):
        def started():
            record("started", name=name)
        def reloaded():
            record("reload", name=name)
        def terminated(error):
            record("terminated", name=name, error=error)
        return started, reloaded, terminated

    for name in ("a", "b", "c"):
        started, reloaded, terminated = make(name)
        SystemCallbacks.on_started(started)
        SystemCallbacks.on_reload(reloaded)
        SystemCallbacks.on_terminated(terminated)
''')


def names(events):
    return [e["name"] for e in events]


def test_lists_run_in_registration_order_and_on_terminated_in_reverse(oversipd_daemon):
    daemon = oversipd_daemon(modules={"ordered": ORDERED}, core={"workers": 2})
    daemon.wait_events("started", count=6)
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("reload", count=6)
    assert daemon.stop() == 0
    for slot in (1, 2):
        assert names(daemon.find("started", worker=slot)) == ["a", "b", "c"]
        assert names(daemon.find("reload", worker=slot)) == ["a", "b", "c"]
        assert names(daemon.find("terminated", worker=slot)) == ["c", "b", "a"]


def test_a_coroutine_callback_is_awaited_before_the_next_one_starts(oversipd_daemon):
    source = module('''
        @SystemCallbacks.on_started
        async def slow():
            record("slow_begin")
            await asyncio.sleep(0.2)
            record("slow_end")

        @SystemCallbacks.on_started
        def after():
            record("after")
    ''')
    daemon = oversipd_daemon(modules={"coro": source})
    daemon.wait_events("after")
    assert [e["event"] for e in daemon.find()] == ["slow_begin", "slow_end", "after"]
    assert daemon.stop() == 0


def test_registration_works_as_decorator_or_call_and_refuses_non_callables():
    from oversipd import SystemCallbacks, SystemEvents

    def callback():
        pass

    for callback_list in (SystemCallbacks.on_started, SystemCallbacks.on_reload, SystemCallbacks.on_terminated):
        assert callback_list(callback) is callback
        with pytest.raises(TypeError):
            callback_list("not callable")
    for event in (SystemEvents.on_initialize, SystemEvents.on_started,
                  SystemEvents.on_user_reload, SystemEvents.on_terminated):
        assert event(callback) is callback
        with pytest.raises(TypeError):
            event(42)


def test_on_terminated_gets_error_false_when_asked_to_stop(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, core={"workers": 2})
    daemon.wait_events("started", count=2)
    assert daemon.stop() == 0
    assert sorted((e["worker"], e["error"]) for e in daemon.find("terminated")) == [(1, False), (2, False)]


def test_an_on_started_exception_is_fatal_for_the_whole_daemon(oversipd_daemon):
    source = module('''
        @SystemCallbacks.on_started
        def started():
            if oversipd.process.worker_id == 2:
                raise RuntimeError("cannot start")
            record("started")

        @SystemCallbacks.on_terminated
        def terminated(error):
            record("terminated", error=error)
    ''')
    daemon = oversipd_daemon(modules={"bad": source}, core={"workers": 2}, start=False)
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    log = daemon.log_text()
    assert "CRIT: " in log and "cannot start (RuntimeError)" in log
    assert "exiting with error status" in log
    # The failing worker runs no more callbacks; the others end with error=True.
    assert all(e["error"] is True for e in daemon.find("terminated"))
    assert not daemon.find("terminated", worker=2)
    assert len(daemon.find("started", worker=2)) == 0


def test_an_on_reload_exception_is_logged_and_the_other_callbacks_still_run(oversipd_daemon):
    source = module('''
        @SystemCallbacks.on_reload
        def first():
            raise ValueError("reload went wrong")

        @SystemCallbacks.on_reload
        def second():
            record("second_reload")
    ''')
    daemon = oversipd_daemon(modules={"probe": PROBE, "reloader": source})
    daemon.wait_events("started")
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("second_reload")
    daemon.wait_log("reload went wrong (ValueError)")
    daemon.wait_log("Traceback (most recent call last):")  # the lines after it, as they are read
    assert any("CRIT:" in line for line in daemon.wait_log("reloader.first"))
    assert daemon.stop() == 0


def test_an_on_terminated_exception_is_logged_and_the_other_callbacks_still_run(oversipd_daemon):
    source = module('''
        @SystemCallbacks.on_terminated
        def last_to_run(error):
            record("last", error=error)

        @SystemCallbacks.on_terminated
        def first_to_run(error):
            raise KeyError("bye")
    ''')
    daemon = oversipd_daemon(modules={"ender": source})
    assert daemon.stop() == 0
    assert [e["error"] for e in daemon.find("last")] == [False]
    assert "CRIT:" in daemon.wait_log("first_to_run")[0]


@pytest.mark.parametrize("exception", ["SystemExit(3)", "KeyboardInterrupt()"])
def test_base_exceptions_in_callbacks_follow_the_same_rules(oversipd_daemon, exception):
    source = module(f'''
        @SystemCallbacks.on_reload
        def reloaded():
            raise {exception}

        @SystemCallbacks.on_reload
        def after():
            record("after_reload")
    ''')
    daemon = oversipd_daemon(modules={"raiser": source})
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("after_reload")
    assert daemon.stop() == 0


def test_launcher_fatal_in_the_master_forks_nothing(oversipd_daemon):
    server = module('''
        @SystemEvents.on_initialize
        def initialize():
            Launcher.fatal("no database configured")
    ''')
    daemon = oversipd_daemon(modules={"probe": PROBE}, server_script=server, start=False)
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    log = daemon.log_text()
    assert "CRIT: <Launcher> no database configured" in log
    assert "CRIT: <Launcher> exiting with error status" in log
    assert not daemon.find("started")


def test_launcher_fatal_at_module_import_forks_nothing(oversipd_daemon):
    source = module('''
        Launcher.fatal(ValueError("bad module option"))
    ''')
    daemon = oversipd_daemon(modules={"a_fatal": source, "probe": PROBE}, start=False)
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    assert "bad module option (ValueError)" in daemon.log_text()
    assert not daemon.find("started")


def test_launcher_fatal_in_a_worker_stops_the_others_with_error_and_no_respawn(oversipd_daemon):
    source = module('''
        @SystemCallbacks.on_reload
        def reloaded():
            if oversipd.process.worker_id == 1:
                Launcher.fatal("worker 1 gives up")
            record("reload")

        @SystemCallbacks.on_terminated
        def terminated(error):
            record("terminated", error=error)

        @SystemCallbacks.on_started
        def started():
            record("started")
    ''')
    daemon = oversipd_daemon(modules={"fatal": source}, core={"workers": 3})
    daemon.wait_events("started", count=3)
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_exit() == 1
    assert "worker 1 gives up" in daemon.log_text()
    assert sorted((e["worker"], e["error"]) for e in daemon.find("terminated")) == [(2, True), (3, True)]
    assert len(daemon.find("started")) == 3  # nothing respawned


def test_system_events_run_in_each_worker_around_the_callback_lists(oversipd_daemon):
    server = module('''
        @SystemEvents.on_started
        def replaced():
            record("replaced_handler")

        @SystemEvents.on_started
        def started():
            record("event_started")

        @SystemEvents.on_user_reload
        def user_reload():
            record("event_user_reload")

        @SystemEvents.on_terminated
        def terminated(error):
            record("event_terminated", error=error)
    ''')
    daemon = oversipd_daemon(modules={"probe": PROBE}, server_script=server, core={"workers": 2})
    daemon.wait_events("event_started", count=2)
    daemon.signal(signal.SIGUSR1)
    daemon.wait_events("event_user_reload", count=2)
    assert daemon.stop() == 0
    assert not daemon.find("replaced_handler")
    for slot in (1, 2):
        order = [e["event"] for e in daemon.find(worker=slot)]
        assert order == ["started", "event_started", "event_user_reload", "event_terminated", "terminated"]
        assert daemon.find("event_terminated", worker=slot)[0]["error"] is False


def test_a_system_events_on_started_exception_is_fatal(oversipd_daemon):
    server = module('''
        @SystemEvents.on_started
        def started():
            raise RuntimeError("server script broken")
    ''')
    daemon = oversipd_daemon(server_script=server, start=False)
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    assert "server script broken (RuntimeError)" in daemon.log_text()


def test_a_system_events_on_user_reload_exception_is_logged(oversipd_daemon):
    server = module('''
        @SystemEvents.on_user_reload
        def user_reload():
            raise RuntimeError("user reload broken")
    ''')
    daemon = oversipd_daemon(modules={"probe": PROBE}, server_script=server)
    daemon.signal(signal.SIGUSR1)
    assert "CRIT:" in daemon.wait_log("user reload broken (RuntimeError)")[0]
    daemon.signal(signal.SIGHUP)  # still serving
    daemon.wait_events("reload")
    assert daemon.stop() == 0


def test_namespace_alias_and_module_settings(oversipd_daemon):
    helper = module('''
        VALUE = "from the helper"
    ''')
    user = module('''
        import oversipd.modules.helper as helper
        @SystemCallbacks.on_started
        def started():
            record("seen", alias=oversipd.M is oversipd.modules, value=oversipd.M.helper.VALUE,
                   mine=oversipd.module_settings("user"), absent=oversipd.module_settings("nothing"),
                   name=__name__)
    ''')
    daemon = oversipd_daemon(modules={"helper": helper, "user": user},
                             settings={"user": {"pool": 5, "name": "db"}})
    [seen] = daemon.wait_events("seen")
    assert seen["alias"] is True and seen["value"] == "from the helper"
    assert seen["mine"] == {"pool": 5, "name": "db"} and seen["absent"] == {}
    assert seen["name"] == "oversipd.modules.user"
    assert daemon.stop() == 0


def test_drop_ins_are_imported_in_sorted_order_after_the_server_script(oversipd_daemon):
    source = module('''
        record("imported", name=__name__.rsplit(".", 1)[-1])
    ''')
    server = module('''
        record("imported", name="server")
    ''')
    daemon = oversipd_daemon(modules={"b": source, "a": source, "_skipped": source, ".hidden": source},
                             server_script=server)
    assert daemon.stop() == 0
    assert names(daemon.find("imported")) == ["server", "a", "b"]


def test_a_drop_in_package_is_imported(oversipd_daemon):
    daemon = oversipd_daemon(start=False)
    package = daemon.modules_dir / "pkg"
    package.mkdir(mode=0o755)
    (package / "__init__.py").write_text(module('record("imported", name=__name__)'))
    daemon.start()
    assert names(daemon.find("imported")) == ["oversipd.modules.pkg"]
    assert daemon.stop() == 0
