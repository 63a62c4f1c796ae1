"""oversipd.worker_resource: declared in the master, opened in each worker, closed as it ends."""

from __future__ import annotations

import signal

from conftest import module

# Three resources declared at import time; each open records itself and
# returns something only this process has (its pid); "third" fails to close.
RESOURCES = module('''
    from oversipd import worker_resource

    def opener(name):
        async def open():
            await asyncio.sleep(0)  # an async opener is awaited
            record("open", name=name)
            return {"name": name, "pid": os.getpid()}
        return open

    def closer(name):
        def close(value):
            record("close", name=name, pid=value["pid"])
            if name == "third":
                raise OSError("third would not close")
        return close

    resources = [worker_resource(name, open=opener(name), close=closer(name))
                 for name in ("first", "second", "third")]

    @SystemEvents.on_initialize
    def in_master():
        try:
            resources[0].get()
        except Exception as error:
            record("master_get", type=type(error).__name__, message=str(error))

    @SystemCallbacks.on_started
    def started():
        record("started", values=[r.get() for r in resources])

    @SystemCallbacks.on_terminated
    def terminated(error):
        record("terminated", still_open=[r.is_open for r in resources])
''')

FAILING_OPEN = module('''
    from oversipd import ResourceError, worker_resource

    def refuse():
        raise ResourceError("the directory service said no")

    def crash():
        raise KeyError("missing")

    worker_resource("fine", open=lambda: record("open", name="fine"))
    worker_resource(os.environ["FAILING"], open=refuse if os.environ["FAILING"] == "refusing" else crash)
    worker_resource("never", open=lambda: record("open", name="never"))

    @SystemCallbacks.on_started
    def started():
        record("started")
''')


def names(events: list[dict]) -> list[str]:
    return [event["name"] for event in events]


def test_open_in_declaration_order_before_callbacks_close_in_reverse_after(oversipd_daemon) -> None:
    daemon = oversipd_daemon(server_script=RESOURCES, workers=2)
    for worker in (1, 2):
        started = daemon.wait_events("started", worker=worker)[0]
        opened = daemon.find("open", worker=worker)
        assert names(opened) == ["first", "second", "third"]
        assert all(event["t"] < started["t"] for event in opened), "open before the on_started callbacks"
        assert [value["pid"] for value in started["values"]] == [started["pid"]] * 3, "each worker's own"
    master_get = daemon.wait_events("master_get")[0]
    assert master_get["role"] == "master" and master_get["type"] == "ResourceNotOpenError"
    assert "first is not open in this process" in master_get["message"]

    workers = daemon.worker_pids()
    assert daemon.stop() == 0
    for worker in (1, 2):
        terminated = daemon.wait_events("terminated", worker=worker)[0]
        assert terminated["still_open"] == [True, True, True], "open during the on_terminated callbacks"
        closed = daemon.wait_events("close", count=3, worker=worker)
        assert names(closed) == ["third", "second", "first"]
        assert {event["pid"] for event in closed} == {workers[worker]}
        assert all(event["t"] > terminated["t"] for event in closed)
    daemon.wait_log("CRIT: <Resources> third: close raised:", count=2)
    daemon.wait_log("third would not close")
    daemon.wait_log("INFO: <Resources> first: closed", count=2)


def test_an_open_that_fails_is_fatal_and_names_the_resource(oversipd_daemon) -> None:
    daemon = oversipd_daemon(server_script=FAILING_OPEN, start=False, env={"FAILING": "refusing"})
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    daemon.wait_log("CRIT: <Launcher> refusing: the directory service said no")
    daemon.wait_log("exiting with error status")
    assert names(daemon.find("open")) == ["fine"]
    assert not daemon.find("started"), "no on_started callback ran"


def test_an_open_that_raises_is_fatal_with_its_traceback(oversipd_daemon) -> None:
    daemon = oversipd_daemon(server_script=FAILING_OPEN, start=False, env={"FAILING": "crashing"})
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    daemon.wait_log("CRIT: <Resources> crashing: open raised:")
    daemon.wait_log("Traceback")
    daemon.wait_log("CRIT: <Launcher> crashing: cannot open: KeyError('missing')")
    assert names(daemon.find("open")) == ["fine"]


def test_a_respawned_worker_opens_its_resources_again(oversipd_daemon) -> None:
    daemon = oversipd_daemon(server_script=RESOURCES, workers=2)
    daemon.wait_events("started", count=2)
    old_pid = daemon.kill_worker(1, signal.SIGKILL)
    started = daemon.wait_events("started", count=2, worker=1)[-1]
    assert started["pid"] != old_pid
    assert [value["pid"] for value in started["values"]] == [started["pid"]] * 3
    reopened = [event for event in daemon.find("open", worker=1) if event["pid"] == started["pid"]]
    assert names(reopened) == ["first", "second", "third"]
    assert not [event for event in daemon.find("close") if event["pid"] == old_pid], "a killed worker closes nothing"
    assert len(daemon.find("open", worker=2)) == 3, "the other worker kept its own"


DECLARED_IN_A_WORKER = module('''
    from oversipd import worker_resource

    @SystemCallbacks.on_started
    def started():
        try:
            worker_resource("late", open=lambda: None)
        except RuntimeError as error:
            record("refused", message=str(error))
''')


def test_declaring_in_a_worker_is_refused(oversipd_daemon) -> None:
    daemon = oversipd_daemon(modules={"late": DECLARED_IN_A_WORKER})
    message = daemon.wait_events("refused")[0]["message"]
    assert "worker_resource('late') called in a worker: declare resources in the master" in message


# "first" opens at once; "stuck" never finishes opening.
STUCK_OPEN = module('''
    from oversipd import worker_resource

    def open_first():
        record("open", name="first")
        return "first"

    async def open_stuck():
        record("opening", name="stuck")
        await asyncio.Event().wait()

    worker_resource("first", open=open_first, close=lambda value: record("close", name=value))
    worker_resource("stuck", open=open_stuck, close=lambda value: record("close", name="stuck"))
''')


def test_a_worker_stopped_while_opening_closes_what_it_opened(oversipd_daemon) -> None:
    daemon = oversipd_daemon(server_script=STUCK_OPEN, start=False)
    daemon.start(wait=False)
    daemon.wait_events("opening", name="stuck")
    daemon.stop()
    daemon.wait_events("close", name="first")
    assert names(daemon.find("close")) == ["first"], "only what was opened is closed"
