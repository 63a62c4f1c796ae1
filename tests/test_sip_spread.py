"""Issue 23 — TCP load spread over the workers.

A client's connection is accepted by the worker its slot's listening socket
belongs to (a reuseport group per TCP SIP listener, transport/sockets.py),
and the requests read from one connection are handled by the worker their
Call-ID hashes to (ProxyEngine.pass_on_by_call): one trunk connection no
longer pins every call to one core.
"""

from __future__ import annotations

import collections
import socket

import psutil
import pytest

from listen_helpers import free_port
from sip_helpers import SIPP, StreamReader, request_bytes, sip_daemon, sipp_counts
from test_sip_proxy_sipp import CALLS, PROFILE, ROUTING_SCRIPT, call, callees  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is missing: `make test` installs sip-tester")

CLIENTS = 200
TRUNK_REQUESTS = 200


def connections_held(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_clients_connecting_at_once_are_accepted_by_every_worker_in_fair_shares(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, workers=2)
    clients = [socket.create_connection((server.host, server.port)) for _ in range(CLIENTS)]
    try:
        # Every connection answered: each was accepted by some worker.
        for number, sock in enumerate(clients):
            sock.sendall(request_bytes("OPTIONS", port=server.port, via_port=sock.getsockname()[1],
                                       transport="TCP", call_id=f"spread-{number}"))
        for sock in clients:
            assert StreamReader(sock).message().startswith(b"SIP/2.0 200")
        held = {slot: connections_held(pid, server.port) for slot, pid in server.daemon.worker_pids().items()}
        assert sum(held.values()) == CLIENTS
        # By the kernel's hash of each 4-tuple: 100 each on average, under 50 about once in 10^13.
        assert min(held.values()) >= CLIENTS // 4, held
    finally:
        for sock in clients:
            sock.close()


def test_requests_read_from_one_connection_are_handled_by_both_workers(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, workers=2)
    with socket.create_connection((server.host, server.port)) as sock:
        reader = StreamReader(sock)
        for number in range(TRUNK_REQUESTS):
            sock.sendall(request_bytes("OPTIONS", port=server.port, via_port=sock.getsockname()[1],
                                       transport="TCP", call_id=f"trunk-{number}"))
            assert reader.message().startswith(b"SIP/2.0 200")   # back over the same connection
    events = server.daemon.wait_events("request", count=TRUNK_REQUESTS)
    by_worker = collections.Counter(e["worker"] for e in events)
    assert set(by_worker) == {1, 2} and min(by_worker.values()) >= TRUNK_REQUESTS // 4, by_worker
    assert len({e["call_id"] for e in events}) == TRUNK_REQUESTS   # each handled once


def test_a_trunk_connection_in_and_one_out_carry_calls_routed_by_both_workers(oversipd_daemon, callees):
    server = sip_daemon(oversipd_daemon, script=ROUTING_SCRIPT, workers=2,
                        extra_tables={"proxy.proxy_out": {**PROFILE, "transport_preference": ["tcp"]}})
    uas = callees("proxy_call_uas.xml", transport="t1", calls=2 * CALLS)
    result = call(server, f"127.0.0.1:{uas.port}", "tcp", transport="t1", calls=2 * CALLS)
    assert sipp_counts(result) == (2 * CALLS, 0), result.stdout[-3000:]
    status, output = uas.finish()
    assert status == 0, output[-3000:]
    invites = [e for e in server.daemon.wait_events("success", count=4 * CALLS) if e["method"] == "INVITE"]
    by_worker = collections.Counter(e["worker"] for e in invites)
    assert set(by_worker) == {1, 2} and min(by_worker.values()) >= CALLS // 2, by_worker


def test_a_tcp_sip_port_with_a_connection_in_time_wait_still_starts(oversipd_daemon):
    """The check that no other daemon holds the port binds as the real socket does (SO_REUSEADDR)."""
    port = free_port("tcp", "udp")
    with socket.create_server(("127.0.0.1", port)) as listener:
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()          # our side closes first: its end (local port `port`) waits in TIME_WAIT
        client.close()
    assert any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT
               for c in psutil.net_connections("tcp"))
    server = sip_daemon(oversipd_daemon, port=port)
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(request_bytes("OPTIONS", port=server.port, via_port=sock.getsockname()[1], transport="TCP"))
        assert StreamReader(sock).message().startswith(b"SIP/2.0 200")
