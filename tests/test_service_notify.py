"""SPEC §6 sd_notify, outside systemd: the master's datagrams on a socket the test owns."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from oversipd.testing import Daemon, _Inbox, bind_datagram_inbox

WORKERS = 2
TIMEOUT = 30.0

PROBE = '''
import os
import oversipd
from oversipd import SystemCallbacks
from oversipd.testing import record


@SystemCallbacks.on_started
def started():
    record("on_started")


@SystemCallbacks.on_reload
def reloaded():
    gate = oversipd.module_settings("probe").get("block_on_reload")
    if gate and oversipd.process.worker_id == 1:
        record("blocking")
        with open(gate) as fifo:  # the reactor is stuck until the test writes and closes
            fifo.read()
    record("on_reload")
'''


class NotifyListener:
    """A datagram socket standing in for systemd: every message, with its arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.inbox = _Inbox()
        self.sock = bind_datagram_inbox(address, self.inbox,
                                        lambda data: (time.monotonic_ns(), data.decode().split("\n")))

    def messages(self) -> list[tuple[int, list[str]]]:
        with self.inbox.changed:
            return list(self.inbox.items)

    def with_line(self, prefix: str) -> list[tuple[int, list[str]]]:
        return [(t, lines) for t, lines in self.messages() if any(l.startswith(prefix) for l in lines)]

    def wait(self, prefix: str, count: int = 1, timeout: float = TIMEOUT,
             where: Callable[[list[str]], bool] = lambda lines: True) -> list[tuple[int, list[str]]]:
        def enough(_: Any) -> list[tuple[int, list[str]]] | None:
            found = [(t, lines) for t, lines in self.with_line(prefix) if where(lines)]
            return found if len(found) >= count else None
        return self.inbox.wait_for(enough, timeout, f"{count} x {prefix!r} on {self.address}")


def value(lines: list[str], key: str) -> str:
    return next(line.split("=", 1)[1] for line in lines if line.startswith(key + "="))


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    sockets = Path(tmp_path / "n")
    sockets.mkdir()
    listener = NotifyListener(str(sockets / "notify"))
    yield listener
    listener.sock.close()


def start(oversipd_daemon, listener: NotifyListener, env: dict[str, str] | None = None,
          core: dict[str, Any] | None = None, **options: Any) -> Daemon:
    """A daemon with the probe module whose NOTIFY_SOCKET is `listener`; not waited for."""
    daemon = oversipd_daemon(start=False, modules={"probe": PROBE},
                             env={"NOTIFY_SOCKET": listener.address, **(env or {})},
                             core={"workers": WORKERS, **(core or {})}, **options)
    daemon.start(wait=False)
    return daemon


def test_ready_with_mainpid_only_after_every_worker_ran_on_started(oversipd_daemon, listener) -> None:
    daemon = start(oversipd_daemon, listener)
    (ready_at, lines), = listener.wait("READY=1")
    started = daemon.wait_events("on_started", WORKERS)
    assert all(event["t"] < ready_at for event in started)
    assert value(lines, "MAINPID") == str(daemon.pid)
    assert value(lines, "STATUS") == f"{WORKERS} of {WORKERS} worker(s) running; 0 reload(s), 0 respawn(s)"


def test_reload_is_reloading_then_ready_after_every_on_reload(oversipd_daemon, listener) -> None:
    daemon = start(oversipd_daemon, listener)
    listener.wait("READY=1")
    before = time.monotonic_ns()
    daemon.signal(signal.SIGHUP)
    (reloading_at, reloading), = listener.wait("RELOADING=1")
    (ready_at, ready), = listener.wait("READY=1", where=lambda lines: "1 reload(s)" in value(lines, "STATUS"))
    reloaded = daemon.wait_events("on_reload", WORKERS)
    # MONOTONIC_USEC is CLOCK_MONOTONIC when the reload began (what systemd compares).
    assert before // 1000 <= int(value(reloading, "MONOTONIC_USEC")) <= reloading_at // 1000
    assert all(before < event["t"] < ready_at for event in reloaded)
    assert "STATUS=reloading" in reloading


def test_rejected_reload_is_ready_again_with_a_status_saying_so(oversipd_daemon, listener) -> None:
    daemon = start(oversipd_daemon, listener)
    listener.wait("READY=1")
    daemon.write_conf("[core]\nworkers = 'many'\n")
    daemon.signal(signal.SIGHUP)
    listener.wait("RELOADING=1")
    (_, ready), = listener.wait("READY=1", where=lambda lines: "rejected" in value(lines, "STATUS"))
    assert value(ready, "STATUS") == "reload rejected: invalid configuration; running on the old one"
    assert daemon.find("on_reload") == []


def test_stop_sends_stopping(oversipd_daemon, listener) -> None:
    daemon = start(oversipd_daemon, listener)
    listener.wait("READY=1")
    assert daemon.stop() == 0
    (_, stopping), = listener.wait("STOPPING=1")
    assert value(stopping, "STATUS") == "stopping: stop requested (SIGTERM)"


def test_status_counts_respawns(oversipd_daemon, listener) -> None:
    daemon = start(oversipd_daemon, listener)
    listener.wait("READY=1")
    os.kill(daemon.worker_pids()[1], signal.SIGKILL)
    listener.wait("STATUS=", where=lambda lines: value(lines, "STATUS") ==
                  f"{WORKERS} of {WORKERS} worker(s) running; 0 reload(s), 1 respawn(s)")


def test_abstract_namespace_socket(oversipd_daemon) -> None:
    listener = NotifyListener(f"@oversipd-test-{uuid.uuid4().hex}")
    try:
        daemon = start(oversipd_daemon, listener)
        (_, lines), = listener.wait("READY=1")
        assert value(lines, "MAINPID") == str(daemon.pid)
    finally:
        listener.sock.close()


def test_watchdog_is_petted_only_while_every_worker_answers(oversipd_daemon, listener, tmp_path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    daemon = start(oversipd_daemon, listener, env={"WATCHDOG_USEC": "1000000"},
                   core={"worker_timeout": 0}, settings={"probe": {"block_on_reload": str(gate)}})
    listener.wait("READY=1")
    listener.wait("WATCHDOG=1", count=3)  # every 0.5 s: half of WATCHDOG_USEC
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("blocking")
    # Worker 1's reactor is stuck: the master stops petting and says why, each time.
    daemon.wait_log("missed its heartbeat", count=2)
    petted = len(listener.with_line("WATCHDOG=1"))
    daemon.wait_log("missed its heartbeat", count=4)
    assert len(listener.with_line("WATCHDOG=1")) == petted
    with open(gate, "w") as release:
        release.write("go")
    daemon.wait_events("on_reload", WORKERS)
    listener.wait("WATCHDOG=1", count=petted + 1)


def test_watchdog_for_another_pid_is_ignored(oversipd_daemon, listener) -> None:
    daemon = start(oversipd_daemon, listener, env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    listener.wait("READY=1")
    daemon.signal(signal.SIGHUP)
    listener.wait("READY=1", count=2)
    assert listener.with_line("WATCHDOG=1") == []
