"""Modules that raise, at import, in every callback list and in every event, with every kind of exception.

SPEC §2: an exception at import, in on_initialize, in an on_started
callback or in SystemEvents.on_started is fatal (logged CRIT, "exiting
with error status", exit status 1, no respawn; the failing worker runs no
more callbacks, the others get on_terminated(True)); in on_reload,
on_terminated, on_user_reload and SystemEvents.on_terminated it is logged
CRIT and the rest still run.  "Every kind" includes the BaseExceptions a
module can raise: SystemExit, KeyboardInterrupt, GeneratorExit and
asyncio.CancelledError.
"""

from __future__ import annotations

import signal

import pytest

# name -> a statement raising that kind of exception (MARK in its text)
MARK = "injected-by-test"
KINDS = {
    "RuntimeError": f"raise RuntimeError({MARK!r})",
    "Exception subclass": f"raise type('ModuleError', (Exception,), {{}})({MARK!r})",
    "SystemExit(0)": "raise SystemExit(0)",
    "SystemExit(text)": f"raise SystemExit({MARK!r})",
    "KeyboardInterrupt": f"raise KeyboardInterrupt({MARK!r})",
    "GeneratorExit": f"raise GeneratorExit({MARK!r})",
    "CancelledError": f"raise __import__('asyncio').CancelledError({MARK!r})",
    "BaseException subclass": f"raise type('ModuleAbort', (BaseException,), {{}})({MARK!r})",
    "unprintable": ("raise type('Unprintable', (Exception,), "
                    "{'__str__': lambda self: 1 / 0})()"),
}
FATAL_END = "exiting with error status"
# Lines that mean an exception got somewhere oversipd should have caught it.
ESCAPED = ("exception escaped the reactor", "Task exception was never retrieved",
           "Task was destroyed but it is pending", "Exception ignored in")

kinds = pytest.mark.parametrize("kind", sorted(KINDS))


def raising(kind: str, indent: str = "    ") -> str:
    return indent + KINDS[kind]


def assert_nothing_escaped(log: str) -> None:
    for text in ESCAPED:
        assert text not in log, f"{text!r} in the log:\n{log}"


# --- at import: `oversipd check` exits 1, nothing runs -------------------------

@kinds
@pytest.mark.parametrize("where", ["drop-in module", "server script"])
def test_import_failure_is_fatal_for_check(oversipd_daemon, kind, where):
    source = f"from oversipd.testing import record\nrecord('imported')\n{raising(kind, '')}\n"
    files = {"modules": {"bad": source}} if where == "drop-in module" else {"server_script": source}
    daemon = oversipd_daemon(start=False, **files)
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    assert result.returncode == 1, result.stderr
    failed = "module bad failed to import" if where == "drop-in module" else "failed to import"
    assert failed in result.stderr and FATAL_END in result.stderr, result.stderr
    assert "configuration OK" not in result.stdout


@pytest.mark.parametrize("where", ["drop-in module", "server script"])
def test_import_failure_is_fatal_for_run(oversipd_daemon, where):
    source = raising("RuntimeError", "") + "\n"
    files = {"modules": {"bad": source}} if where == "drop-in module" else {"server_script": source}
    daemon = oversipd_daemon(start=False, core={"workers": 2}, **files)
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    log = daemon.log_text()
    assert "failed to import" in log and FATAL_END in log
    assert "worker(s)" not in log  # nothing forked


# --- fatal hooks: exit 1, no respawn -------------------------------------------------

@kinds
def test_on_initialize_failure_is_fatal(oversipd_daemon, kind):
    script = ("from oversipd import SystemEvents\n\n@SystemEvents.on_initialize\n"
              f"def initialize():\n{raising(kind)}\n")
    daemon = oversipd_daemon(start=False, server_script=script, core={"workers": 2})
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    log = daemon.log_text()
    assert "on_initialize raised" in log and FATAL_END in log
    assert "worker(s)" not in log  # nothing forked


FAIL_IN_WORKER_1 = """
import os
import oversipd
from oversipd import SystemCallbacks, SystemEvents
from oversipd.testing import record


@SystemCallbacks.on_started
def started():
    record("started")


@SystemCallbacks.on_terminated
def terminated(error):
    record("terminated", error=error)


@{decorator}
{asynchronous}def fail_in_worker_1():
    if oversipd.process.worker_id == 1:
{statement}
"""


@kinds
@pytest.mark.parametrize("hook", ["SystemCallbacks.on_started", "SystemEvents.on_started"])
def test_on_started_failure_is_fatal(oversipd_daemon, kind, hook):
    source = FAIL_IN_WORKER_1.format(decorator=hook, asynchronous="async " if "Events" in hook else "",
                                     statement=raising(kind, "        "))
    daemon = oversipd_daemon(start=False, modules={"failing": source}, core={"workers": 2})
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    log = daemon.log_text()
    assert FATAL_END in log
    assert_nothing_escaped(log)
    # The worker that called Launcher.fatal runs no more callbacks; the other
    # one is stopped with error=True; nobody is respawned.
    assert daemon.find("terminated", worker=1) == []
    other = daemon.find("terminated", worker=2)
    assert [e["error"] for e in other] == [True]
    assert len(daemon.find("started", worker=1)) == 1


# --- non-fatal hooks: logged CRIT, the rest still run ----------------------------------

NON_FATAL_MODULE = """
from oversipd import SystemCallbacks
from oversipd.testing import record


@SystemCallbacks.on_reload
def reload_raises():
{statement}


@SystemCallbacks.on_reload
async def reload_raises_async():
{statement}


@SystemCallbacks.on_reload
def reload_after():
    record("reload_after")


@SystemCallbacks.on_terminated
def terminated_last(error):  # registered first: runs last
    record("terminated", error=error)


@SystemCallbacks.on_terminated
def terminated_raises(error):
{statement}


@SystemCallbacks.on_terminated
async def terminated_raises_async(error):
{statement}
"""

NON_FATAL_SCRIPT = """
from oversipd import SystemEvents
from oversipd.testing import record


@SystemEvents.on_started
def ready():
    record("ready")


@SystemEvents.on_user_reload
async def user_reload():
    record("user_reload")
{statement}


@SystemEvents.on_terminated
def terminated(error):
    record("terminated_event", error=error)
{statement}
"""


@kinds
def test_non_fatal_hooks_log_and_go_on(oversipd_daemon, kind):
    statement = raising(kind)
    daemon = oversipd_daemon(modules={"flaky": NON_FATAL_MODULE.format(statement=statement)},
                             server_script=NON_FATAL_SCRIPT.format(statement=statement),
                             core={"workers": 2})
    daemon.wait_events("ready", count=2)
    pids = {e["pid"] for e in daemon.find("ready")}

    daemon.signal(signal.SIGHUP)
    daemon.wait_log("reload done")
    assert {e["pid"] for e in daemon.wait_events("reload_after", count=2)} == pids
    daemon.wait_log("on_reload callback", count=4)  # two failures in each worker

    daemon.signal(signal.SIGUSR1)
    daemon.wait_events("user_reload", count=2)
    daemon.wait_log("SystemEvents.on_user_reload raised", count=2)

    assert daemon.stop() == 0
    log = daemon.log_text()
    assert_nothing_escaped(log)
    assert log.count("on_terminated callback") == 4, log
    assert log.count("SystemEvents.on_terminated raised") == 2, log
    assert sorted(e["pid"] for e in daemon.find("terminated", error=False)) == sorted(pids)
    assert len(daemon.find("terminated")) == 2
    assert len(daemon.find("ready")) == 2  # nobody died and came back
    for pid in pids:
        assert f"(pid {pid}) exited with status 0" in log, log
