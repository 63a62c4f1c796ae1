"""SIP.md §10: a client over TCP stays reachable over its own connection, whichever worker routes to it.

The client sits behind a "NAT": it registers over a TCP connection it
opened and answers only there (its Contact names an address nobody can
reach).  The registrar and the callers are UDP sockets of the test; the
callers send from many ports so that, with 2 workers, both workers route
requests for the client, while only one of them accepted its connection.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from oversipd.sip.syntax.message import Request as Message, parse_message

from sip_helpers import CLIENT_TIMEOUT, StreamReader, UdpClient, request_bytes, sip_daemon
from test_sip_proxy import Peer

FLOW_SCRIPT = """
from oversipd import SipEvents
from oversipd.sip import Proxy
from oversipd.testing import record

@SipEvents.on_request
def on_request(request):
    record("request", method=request.sip_method, call_id=request.call_id, transport=request.transport)
    request.loose_route()
    proxy = Proxy("proxy_out")
    call_id = request.call_id
    proxy.on_error(lambda status, reason: record("error", call_id=call_id, status=status, reason=reason))
    proxy.route(request)
"""

PROFILE = {"do_record_routing": True, "use_dns": False, "timer_B": 3, "timer_F": 3}
UNREACHABLE_CONTACT = "sip:natted@192.0.2.1:5999;transport=tcp"   # TEST-NET-1: nobody answers there
MAX_CALLERS = 48   # ports tried until both workers routed to the client (2**-47 to miss by chance)


class NattedClient:
    """A TCP client that registered through the proxy and answers 200 to what reaches it over its connection."""

    def __init__(self, server) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=CLIENT_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.call_id = f"register-{self.port}"
        self.reader = StreamReader(self.sock)
        self.received: list[Message] = []
        self.answering: threading.Thread | None = None

    def register(self, registrar: Peer, server) -> Message:
        """REGISTER through the proxy; the registrar answers 200; return what the registrar got."""
        self.sock.sendall(request_bytes("REGISTER", port=registrar.port, via_port=self.port, transport="TCP",
                                        call_id=self.call_id, extra=f"Contact: <{UNREACHABLE_CONTACT}>"))
        at_registrar = registrar.receive_method("REGISTER")
        registrar.answer(at_registrar, 200)
        response = parse_message(self.reader.message())
        assert response.status == 200
        return at_registrar

    def answer_everything(self) -> None:
        self.answering = threading.Thread(target=self.serve, daemon=True)
        self.answering.start()

    def serve(self) -> None:
        self.sock.settimeout(None)
        while True:
            try:
                request = parse_message(self.reader.message())
            except (EOFError, OSError):
                return
            self.received.append(request)
            try:
                self.sock.sendall(request.make_response(200, to_tag="natted").to_bytes())
            except OSError:   # closed by the test meanwhile
                return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the answering thread's recv; close() alone does not
        except OSError:
            pass
        self.sock.close()
        if self.answering is not None:
            self.answering.join(CLIENT_TIMEOUT)


@pytest.fixture
def flow_server(oversipd_daemon):
    return sip_daemon(oversipd_daemon, script=FLOW_SCRIPT, workers=2,
                      extra_tables={"proxy.proxy_out": PROFILE})


@pytest.fixture
def registrar():
    peer = Peer()
    yield peer
    peer.close()


def path_of(registered: Message) -> str:
    path = registered.header("path")
    assert path is not None
    return path


@contextlib.contextmanager
def registered_client(server, registrar: Peer, answering: bool = True) -> Iterator[tuple[NattedClient, str]]:
    """A client registered through the proxy, and the Route (its Path) that reaches it; closed after."""
    client = NattedClient(server)
    try:
        route = path_of(client.register(registrar, server))
        if answering:
            client.answer_everything()
        yield client, route
    finally:
        client.close()


def message_for_client(route: str, caller_port: int, call_id: str) -> bytes:
    """A MESSAGE to the client's (unreachable) Contact, with the Route the registrar got in Path."""
    lines = [f"MESSAGE {UNREACHABLE_CONTACT} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{caller_port};branch=z9hG4bK{call_id};rport",
             f"Route: {route}",
             "From: <sip:caller@example.com>;tag=c1",
             f"To: <{UNREACHABLE_CONTACT}>",
             f"Call-ID: {call_id}",
             "CSeq: 1 MESSAGE",
             "Max-Forwards: 70",
             "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def final_status(caller: UdpClient) -> int:
    while (status := caller.response().status) < 200:
        pass
    return status


def message_from_new_port(server, route: str, call_id: str) -> int:
    """The final status a MESSAGE for the client gets, sent from a fresh UDP port."""
    caller = UdpClient(server)
    try:
        caller.send(message_for_client(route, caller.port, call_id))
        return final_status(caller)
    finally:
        caller.close()


def messages_until_both_workers_routed(server, route: str, prefix: str) -> list[int]:
    """Statuses of MESSAGEs sent from new ports until each of the 2 workers routed at least one."""
    daemon = server.daemon
    statuses = []
    for number in range(MAX_CALLERS):
        statuses.append(message_from_new_port(server, route, f"{prefix}-{number}"))
        workers = {e["worker"] for e in daemon.find("request", method="MESSAGE") if e["call_id"].startswith(prefix)}
        if workers == {1, 2}:
            return statuses
    raise AssertionError(f"{MAX_CALLERS} callers all reached the same worker")


def owner_of_connection(daemon, client: "NattedClient") -> int:
    """The slot whose worker accepted the client's connection (holds its socket).

    Not the one that handled its REGISTER: a worker passes a connection's
    requests to the worker their Call-ID hashes to (issue 23).
    """
    for slot, pid in daemon.worker_pids().items():
        if any(c.raddr and c.raddr[1] == client.port for c in psutil.Process(pid).net_connections("tcp")):
            return slot
    raise AssertionError(f"no worker holds the connection from port {client.port}")


def client_accepted_by(server, slot: int) -> "NattedClient":
    """A client whose connection the worker of `slot` accepted: the kernel's reuseport hash of the
    connection's 4-tuple picks the slot (transport/sockets.py), so connect until it is that one."""
    for _ in range(64):
        client = NattedClient(server)
        wait_until(lambda: master_holds_connection(server.daemon, client.port), "the connection accepted")
        if owner_of_connection(server.daemon, client) == slot:
            return client
        client.close()
    raise AssertionError(f"64 connections and none accepted by worker {slot}")


def master_holds_connection(daemon, client_port: int) -> bool:
    return any(c.raddr and c.raddr[1] == client_port for c in psutil.Process(daemon.pid).net_connections("tcp"))


def wait_until(condition, what: str) -> None:
    """Poll `condition` (the socket tables and the event list have no change event to block on here)."""
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def unread_by_daemon(client_port: int) -> int:
    """Bytes waiting in the receive queue of the daemon's end of the client's connection (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == client_port:
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no connection from port {client_port}")


def wait_until_closed(client_port: int) -> None:
    """Until the daemon's end of the client's connection left ESTABLISHED and CLOSE_WAIT: it closed it.

    The kernel's socket table has no change event to wait on: polled.
    """
    def still_open() -> bool:
        return any(c.raddr and c.raddr[1] == client_port
                   and c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT)
                   for c in psutil.net_connections("tcp"))
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while still_open():
        assert time.monotonic() < deadline, "the daemon never closed its end of the client's connection"
        time.sleep(0.01)


def test_register_gets_a_path_with_a_flow_token_and_the_outbound_flag(flow_server, registrar):
    with registered_client(flow_server, registrar, answering=False) as (_, path):
        # Reached from the registrar's side (UDP here); the token names the client's connection.
        assert path.startswith("<sip:ovf") and path.endswith(f"@127.0.0.1:{flow_server.port};lr;ob>")


def test_requests_for_a_natted_client_reach_it_over_its_connection_from_either_worker(flow_server, registrar):
    daemon = flow_server.daemon
    with registered_client(flow_server, registrar) as (client, route):
        assert master_holds_connection(daemon, client.port)   # kept, to outlive its worker
        statuses = messages_until_both_workers_routed(flow_server, route, "both")
        assert statuses == [200] * len(statuses)
        assert len(client.received) == len(statuses)
        assert all(request.ruri.host == "192.0.2.1" for request in client.received)


def test_the_connection_survives_a_crash_of_the_worker_that_accepted_it(flow_server, registrar):
    daemon = flow_server.daemon
    with registered_client(flow_server, registrar) as (client, route):
        mark = daemon.mark()
        daemon.kill_worker(owner_of_connection(daemon, client))
        daemon.wait_log("adopted 1 TCP connection(s) of this slot's previous worker", since=mark)
        statuses = messages_until_both_workers_routed(flow_server, route, "respawned")
        assert statuses == [200] * len(statuses)
        assert client.answering is not None and client.answering.is_alive()   # never saw an EOF


SLOW_START = """
import asyncio
from oversipd import SystemEvents

@SystemEvents.on_started
async def slow_start():
    await asyncio.sleep(0.5)   # the SIP listeners, and the slot's relay, start after this
"""


def test_a_request_for_a_respawning_workers_connection_waits_for_it(oversipd_daemon, registrar):
    server = sip_daemon(oversipd_daemon, script=FLOW_SCRIPT, workers=2, modules={"slow_start": SLOW_START},
                        extra_tables={"proxy.proxy_out": PROFILE})
    daemon = server.daemon
    callers = [UdpClient(server) for _ in range(16)]
    try:
        with registered_client(server, registrar) as (client, route):
            mark = daemon.mark()
            daemon.kill_worker(owner_of_connection(daemon, client))
            daemon.wait_log("killed by SIGKILL; respawned", since=mark)
            # Those that reach the other worker now find no one holding the flow's slot for 0.5 s.
            for number, caller in enumerate(callers):
                caller.send(message_for_client(route, caller.port, f"window-{number}"))
            assert [final_status(caller) for caller in callers] == [200] * len(callers)
        assert {e["worker"] for e in daemon.find("request", method="MESSAGE")} == {1, 2}
    finally:
        for caller in callers:
            caller.close()


def test_a_request_for_a_closed_connection_gets_430_from_either_worker(flow_server, registrar):
    daemon = flow_server.daemon
    client = NattedClient(flow_server)
    route = path_of(client.register(registrar, flow_server))
    client.close()
    wait_until_closed(client.port)
    statuses = messages_until_both_workers_routed(flow_server, route, "gone")
    assert statuses == [430] * len(statuses)
    assert not master_holds_connection(daemon, client.port)   # its duplicate was released too
    assert {e["status"] for e in daemon.find("error")} == {430}


SMALL_RELAY_QUEUE = """
import oversipd.sip.transport.relay as relay
relay.MAX_PENDING = 4   # what may wait for another worker's relay queue: the daemon's 4096, made small here
"""


def caller_routed_by(server, route: str, slot: int) -> UdpClient:
    """A UDP caller whose MESSAGEs the worker of `slot` routes (the kernel's reuseport hash of its
    address picks the slot and keeps it): fresh ports until one is answered from there."""
    for number in range(MAX_CALLERS):
        caller = UdpClient(server)
        call_id = f"probe-{caller.port}"
        caller.send(message_for_client(route, caller.port, call_id))
        assert final_status(caller) == 200
        if server.daemon.wait_events("request", call_id=call_id)[0]["worker"] == slot:
            return caller
        caller.close()
    raise AssertionError(f"{MAX_CALLERS} callers and none routed by worker {slot}")


def test_a_request_for_a_flow_whose_worker_is_far_behind_gets_503_not_430(oversipd_daemon, registrar):
    """A 430 tells an Outbound client its flow died (it re-registers: more load); the flow lives, its worker lags."""
    server = sip_daemon(oversipd_daemon, script=FLOW_SCRIPT + SMALL_RELAY_QUEUE, workers=2,
                        extra_tables={"proxy.proxy_out": PROFILE})
    daemon = server.daemon
    with registered_client(server, registrar) as (client, route):
        holder = owner_of_connection(daemon, client)
        caller = caller_routed_by(server, route, 3 - holder)
        count = 40   # beyond the relay's kernel queue (net.unix.max_dgram_qlen, 10 here) and the 4 waiting
        holder_pid = daemon.worker_pids()[holder]
        os.kill(holder_pid, signal.SIGSTOP)   # alive, holding the flow, reading nothing
        try:
            for number in range(count):
                caller.send(message_for_client(route, caller.port, f"lagging-{number}"))
            first = final_status(caller)   # what could not wait in line is answered at once
        finally:
            os.kill(holder_pid, signal.SIGCONT)
        statuses = [first] + [final_status(caller) for _ in range(count - 1)]
        caller.close()
    assert first == 503
    assert set(statuses) == {200, 503}, statuses
    waited = [request for request in client.received if request.call_id.startswith("lagging-")]
    assert len(waited) == statuses.count(200)   # those that waited in line reached the client


def test_a_forged_flow_token_is_not_a_flow(flow_server, registrar):
    with registered_client(flow_server, registrar) as (client, route):
        token = route[len("<sip:"):route.index("@")]
        forged = route.replace(token, token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB"))
        status = message_from_new_port(flow_server, forged, "forged")
        assert status != 200 and client.received == []   # routed by its Request-URI: nobody there


def test_an_in_dialog_request_follows_the_record_route_back_over_the_callers_connection(flow_server, registrar):
    callee = registrar   # a UDP peer all the same
    client = NattedClient(flow_server)
    try:
        client.sock.sendall(request_bytes("INVITE", port=callee.port, via_port=client.port, transport="TCP",
                                          call_id="dialog", extra=f"Contact: <{UNREACHABLE_CONTACT}>"))
        invite = callee.receive_method("INVITE")
        callee.answer(invite, 200)
        while parse_message(client.reader.message()).status < 200:
            pass   # 100 Trying
        route_set = invite.headers("record-route")
        assert len(route_set) == 2 and "ovf" in route_set[1] and ";transport=tcp" in route_set[1]
        client.answer_everything()
        bye = (f"BYE {UNREACHABLE_CONTACT} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{callee.port};branch=z9hG4bKbye1;rport\r\n"
               + "".join(f"Route: {value}\r\n" for value in route_set)
               + f"From: {invite.header('to')};tag=uas1\r\nTo: {invite.header('from')}\r\n"
               "Call-ID: dialog\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        callee.sock.sendto(bye.encode(), (flow_server.host, flow_server.port))
        while True:
            response = parse_message(callee.sock.recv(65535))
            if response.status >= 200:
                break
        assert response.status == 200
        assert [request.method for request in client.received] == ["BYE"]
    finally:
        client.close()


def test_a_new_generation_reads_on_the_old_workers_connections_from_where_they_stopped(flow_server, registrar):
    daemon = flow_server.daemon
    with registered_client(flow_server, registrar, answering=False) as (client, route):
        # Half a REGISTER before the reload, the rest after: the old worker read the
        # first half, the new one must get it with the connection.
        second = request_bytes("REGISTER", port=registrar.port, via_port=client.port, transport="TCP",
                               call_id="split", extra=f"Contact: <{UNREACHABLE_CONTACT}>")
        client.sock.sendall(second[:60])
        wait_until(lambda: unread_by_daemon(client.port) == 0, "the old worker reading the first half")
        mark = daemon.mark()
        (daemon.modules_dir / "touch.py").write_text("# a new drop-in: a new generation of workers\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reload done: generation 2 serves", since=mark)
        client.sock.sendall(second[60:])
        at_registrar = registrar.receive_method("REGISTER")
        assert at_registrar.call_id == "split"
        registrar.answer(at_registrar, 200)
        assert parse_message(client.reader.message()).status == 200
        client.answer_everything()
        statuses = messages_until_both_workers_routed(flow_server, route, "new-generation")
        assert statuses == [200] * len(statuses)
        assert master_holds_connection(daemon, client.port)   # kept for generation 2 now


def test_a_flow_token_names_its_slot_and_flow_and_nothing_else_decodes():
    from oversipd.sip.transport import flows
    token = flows.token(3, 2**64 - 1)
    assert flows.decode(token) == (3, 2**64 - 1, "tcp")
    assert flows.decode(flows.token(1, 7, "wss")) == (1, 7, "wss")
    assert all(c.isalnum() or c in "-_" for c in token)   # fits a SIP URI's user part as is
    assert flows.decode(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert flows.decode("ovf!!") is None and flows.decode("alice") is None and flows.decode(None) is None


def test_a_worker_stopped_alone_leaves_its_connection_to_the_next_worker_of_its_slot(flow_server, registrar):
    daemon = flow_server.daemon
    with registered_client(flow_server, registrar) as (client, route):
        mark = daemon.mark()
        daemon.kill_worker(owner_of_connection(daemon, client), signal.SIGTERM)
        daemon.wait_log("adopted 1 TCP connection(s) of this slot's previous worker", since=mark)
        statuses = messages_until_both_workers_routed(flow_server, route, "after-sigterm")
        assert statuses == [200] * len(statuses)


def test_a_connection_ends_when_its_slot_goes_away_or_the_daemon_stops(flow_server, registrar):
    daemon = flow_server.daemon
    # Worker 2 (the one SIGTTOU removes) accepts the first client, worker 1 the second.
    removed = client_accepted_by(flow_server, 2)
    other = client_accepted_by(flow_server, 1)
    try:
        daemon.remove_worker()
        with pytest.raises(EOFError):
            removed.reader.message()
        daemon.stop()
        with pytest.raises(EOFError):
            other.reader.message()
    finally:
        removed.close()
        other.close()
