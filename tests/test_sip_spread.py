"""Issue 23 — TCP (and UDP) load spread over the workers.

A client's connection is accepted by the worker its slot's listening socket
belongs to (a reuseport group per TCP SIP listener, transport/sockets.py).
Once a connection carries a trunk's load (TRUNK_RATE requests within a
second), the requests read from it are handled by the worker their Call-ID
hashes to (OtherWorkers.pass_on_by_call, proxy/places.py): one trunk connection no longer
pins every call to one core, while a phone's connection keeps its requests
with the worker that holds it.  The same holds for a UDP source address that
carries a trunk's load (UdpTrunks): the kernel gives one address to one
slot's socket, whose worker passes the trunk's requests on by Call-ID.
"""

from __future__ import annotations

import collections
import socket

import psutil
import pytest

from listen_helpers import free_port
from oversipd.sip.transport.listeners import TRUNK_RATE
from sip_helpers import SIPP, StreamReader, UdpClient, request_bytes, sip_daemon, sipp_counts
from test_sip_proxy_sipp import PROFILE, ROUTING_SCRIPT, call, callees  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is missing: `make test` installs sip-tester")

CLIENTS = 200
TRUNK_REQUESTS = 200
TRUNK_CALLS = 100


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


def options_over_one_connection(server, count: int) -> list[dict]:
    """`count` OPTIONS, one after the other, over one connection; the handler's events."""
    with socket.create_connection((server.host, server.port)) as sock:
        reader = StreamReader(sock)
        for number in range(count):
            sock.sendall(request_bytes("OPTIONS", port=server.port, via_port=sock.getsockname()[1],
                                       transport="TCP", call_id=f"one-connection-{number}"))
            assert reader.message().startswith(b"SIP/2.0 200")   # back over the same connection
    return handled_once_each(server, count)


def handled_once_each(server, count: int) -> list[dict]:
    """The handler's events for `count` requests of distinct Call-IDs, each handled once."""
    events = server.daemon.wait_events("request", count=count)
    assert len({e["call_id"] for e in events}) == count
    return events


def options_from_one_udp_address(server, count: int) -> list[dict]:
    """`count` OPTIONS, one after the other, from one UDP socket; the handler's events."""
    client = UdpClient(server)
    try:
        for number in range(count):
            client.request("OPTIONS", call_id=f"one-address-{number}")
            data, sender = client.sock.recvfrom(65535)
            assert data.startswith(b"SIP/2.0 200") and sender[1] == server.port, (data, sender)
    finally:
        client.close()
    return handled_once_each(server, count)


# One trunk (a connection, or a UDP source address) and one phone, over each transport.
ONE_SOURCE = pytest.mark.parametrize("send", [options_over_one_connection, options_from_one_udp_address],
                                     ids=["tcp", "udp"])


@ONE_SOURCE
def test_requests_read_from_a_trunk_are_handled_by_both_workers(oversipd_daemon, send):
    server = sip_daemon(oversipd_daemon, workers=2)
    events = send(server, TRUNK_REQUESTS)   # TRUNK_RATE within a second, and more
    by_worker = collections.Counter(e["worker"] for e in events)
    assert set(by_worker) == {1, 2} and min(by_worker.values()) >= TRUNK_REQUESTS // 4, by_worker
    server.daemon.wait_log("a trunk, its requests now spread over the workers by Call-ID")


@ONE_SOURCE
def test_a_phones_requests_stay_with_the_worker_holding_its_connection_or_slot(oversipd_daemon, send):
    server = sip_daemon(oversipd_daemon, workers=2)
    events = send(server, TRUNK_RATE - 1)
    assert len({e["worker"] for e in events}) == 1


@pytest.mark.parametrize("transport, sipp", [("tcp", "t1"), ("udp", "u1")], ids=["tcp", "udp"])
def test_a_trunk_in_and_one_out_carry_calls_routed_by_both_workers(oversipd_daemon, callees, transport, sipp):
    """SIPp's caller and callee each on one connection, or one UDP socket: every request of a call,
    retransmissions included, meets the worker its Call-ID hashes to, and each callback runs once."""
    server = sip_daemon(oversipd_daemon, script=ROUTING_SCRIPT, workers=2,
                        extra_tables={"proxy.proxy_out": {**PROFILE, "transport_preference": [transport]}})
    uas = callees("proxy_call_uas.xml", transport=sipp, calls=TRUNK_CALLS)
    # 100 calls/s: INVITE, ACK and BYE make the caller a trunk within a fraction of a second.
    result = call(server, f"127.0.0.1:{uas.port}", transport, transport=sipp, calls=TRUNK_CALLS, rate=100)
    assert sipp_counts(result) == (TRUNK_CALLS, 0), result.stdout[-3000:]
    status, output = uas.finish()
    assert status == 0, output[-3000:]
    events = server.daemon.wait_events("success", count=2 * TRUNK_CALLS)
    assert collections.Counter((e["call_id"], e["method"]) for e in events).most_common(1)[0][1] == 1
    by_worker = collections.Counter(e["worker"] for e in events if e["method"] == "INVITE")
    assert set(by_worker) == {1, 2} and min(by_worker.values()) >= TRUNK_CALLS // 5, by_worker


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


def test_a_restart_binds_the_port_again_after_every_slot_closed_connections_first(oversipd_daemon):
    """Connections a slot's own listening socket accepted, closed by us, wait in TIME_WAIT on our port:
    those sockets have SO_REUSEADDR as the [listen] one does, so a restart binds the port again."""
    server = sip_daemon(oversipd_daemon, workers=2)
    for _ in range(16):   # over both slots: all 16 on one slot about once in 30 000 runs
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(b"garbage\r\n\r\n")     # refused and closed by us first (SIP.md §11)
            while sock.recv(4096):
                pass
    assert server.daemon.stop() == 0
    assert any(c.laddr and c.laddr.port == server.port and c.status == psutil.CONN_TIME_WAIT
               for c in psutil.net_connections("tcp"))
    again = sip_daemon(oversipd_daemon, workers=2, port=server.port)
    with socket.create_connection((again.host, again.port)) as sock:
        sock.sendall(request_bytes("OPTIONS", port=again.port, via_port=sock.getsockname()[1], transport="TCP"))
        assert StreamReader(sock).message().startswith(b"SIP/2.0 200")
