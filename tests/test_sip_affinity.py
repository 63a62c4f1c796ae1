"""SIP.md §8: every message of a transaction is handled by the worker holding it, across respawns."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time

import psutil

from listen_helpers import free_port
from sip_helpers import SIPP, SIPP_DIR, UdpClient, sip_daemon, sipp_counts

SOURCES = 24


def test_a_retransmitted_request_reaches_on_request_once_with_two_workers(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, workers=2)
    clients = [UdpClient(server) for _ in range(SOURCES)]   # many source ports: both slots get some
    for number, client in enumerate(clients):
        data = client.request("OPTIONS", call_id=f"call-{number}")
        first = client.response()
        client.send(data)                                    # a retransmission, as a client sends it
        again = client.response()
        assert first.status == 200 and again.to_bytes() == first.to_bytes()
    events = server.daemon.wait_events("request", count=SOURCES)
    assert collections.Counter(e["call_id"] for e in events) == {f"call-{n}": 1 for n in range(SOURCES)}
    assert {e["worker"] for e in events} == {1, 2}
    for client in clients:
        client.close()


def test_a_worker_killed_under_load_loses_nothing_and_answers_only_its_own_requests_again(oversipd_daemon, tmp_path):
    server = sip_daemon(oversipd_daemon, workers=2)
    daemon = server.daemon
    calls = 600
    sipp = subprocess.Popen(
        [SIPP, "-sf", str(SIPP_DIR / "options.xml"), "-t", "un", "-max_socket", "1000", "-i", "127.0.0.1", "-p", str(free_port("udp")),
         "-m", str(calls), "-r", "100", "-nostdin", "-timeout", "60s", "-timeout_error",
         f"127.0.0.1:{server.port}"], cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        daemon.wait_events("request", count=150, timeout=30)
        victim = daemon.kill_worker(1, signal.SIGKILL)
        daemon.wait_log(f"worker 1 (pid {victim}) killed by SIGKILL")
        out, err = sipp.communicate(timeout=90)
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait()
    result = subprocess.CompletedProcess(sipp.args, sipp.returncode, out, err)
    assert sipp_counts(result) == (calls, 0), out[-3000:]
    events = daemon.wait_events("request", count=calls)
    handled = collections.defaultdict(list)
    for event in events:
        handled[event["call_id"]].append(event["pid"])
    assert len(handled) == calls
    twice = {call: pids for call, pids in handled.items() if len(pids) > 1}
    # Only what the killed worker had in hand may be handled again (by its replacement).
    assert all(pids[0] == victim and len(pids) == 2 for pids in twice.values()), twice
    assert {e["worker"] for e in events} == {1, 2}


def udp_sockets_on(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections(kind="udp") if c.laddr and c.laddr.port == port)


def wait_for(predicate, timeout: float = 15.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def test_the_master_keeps_one_udp_socket_per_slot(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, workers=2)
    daemon = server.daemon
    assert udp_sockets_on(daemon.pid, server.port) == 2
    daemon.add_worker()
    daemon.wait_workers(3)
    assert udp_sockets_on(daemon.pid, server.port) == 3
    daemon.remove_worker()
    daemon.wait_workers(2)
    wait_for(lambda: udp_sockets_on(daemon.pid, server.port) == 2)
    # A worker keeps its own slot's socket (and the [listen] one, which slot 1 reads) only.
    for pid in daemon.worker_pids().values():
        assert udp_sockets_on(pid, server.port) <= 2
    client = UdpClient(server)
    client.request("OPTIONS")
    assert client.response().status == 200
    # A respawned worker reads the same slot socket: the master's count does not change.
    daemon.kill_worker(2, signal.SIGKILL)
    daemon.wait_log("worker 2 (pid")
    daemon.wait_workers(2)
    assert udp_sockets_on(daemon.pid, server.port) == 2


def test_a_respawned_worker_answers_what_queued_in_its_slot_meanwhile(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, workers=2)
    daemon = server.daemon
    client = UdpClient(server)
    client.request("OPTIONS", call_id="probe")
    assert client.response().status == 200
    probe = daemon.wait_events("request")[0]
    slot, old_pid = probe["worker"], probe["pid"]
    os.kill(old_pid, signal.SIGSTOP)            # the slot's worker holds its socket but reads nothing
    client.request("OPTIONS", call_id="queued")   # waits in slot `slot`'s socket
    os.kill(old_pid, signal.SIGKILL)
    response = client.response()
    assert response.status == 200 and response.call_id == "queued"
    queued = daemon.wait_events("request", count=2)[1]
    assert queued["call_id"] == "queued" and queued["worker"] == slot and queued["pid"] != old_pid
