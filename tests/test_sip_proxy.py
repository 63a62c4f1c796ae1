"""SIP.md §10: the Proxy API and transaction-stateful forwarding, with plain sockets as the peers.

The client (upstream) and the server (downstream) are UDP sockets of the
test; oversipd sits between them and routes every request to its
Request-URI, which names the downstream socket.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from oversipd.sip.syntax.message import Request as Message, Response, parse_message

from sip_helpers import CLIENT_TIMEOUT, UdpClient, request_bytes, sip_daemon

PROXY_SCRIPT = """
from oversipd import SipEvents
from oversipd.sip import Proxy
from oversipd.testing import record

def raise_in_callback(*args):
    raise ValueError("a callback that raises")

@SipEvents.on_request
def on_request(request):
    record("request", method=request.sip_method, call_id=request.call_id)
    try:
        Proxy("missing")
    except KeyError as error:
        record("key_error", text=str(error))
    request.loose_route()
    proxy = Proxy("proxy_out")
    call_id = request.call_id
    if request.header("X-Raise"):
        proxy.on_provisional_response(raise_in_callback)
        proxy.on_failure_response(raise_in_callback)
        proxy.on_success_response(raise_in_callback)
    else:
        proxy.on_provisional_response(lambda r: record("provisional", call_id=call_id, status=r.status))
        proxy.on_success_response(lambda r: record("success", call_id=call_id, status=r.status))
        proxy.on_failure_response(lambda r: record("failure", call_id=call_id, status=r.status))
    proxy.on_canceled(lambda cancel: record("canceled", call_id=call_id, method=cancel.sip_method))
    proxy.on_invite_timeout(lambda: record("invite_timeout", call_id=call_id))
    proxy.on_error(lambda status, reason: record("error", call_id=call_id, status=status, reason=reason))
    outcome = proxy.route(request)

    def done(future):
        result = future.result()
        record("outcome", call_id=call_id,
               value=result if result is None or isinstance(result, tuple) else result.status)
    outcome.add_done_callback(done)
"""

TIMER_C = 3
PROFILE = {"do_record_routing": True, "timer_B": 2, "timer_C": TIMER_C, "timer_F": 2, "use_dns": False}


class Peer:
    """The downstream UDP peer: reads what the proxy sends, answers what the test tells it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(CLIENT_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.last_from: tuple[str, int] | None = None

    def receive(self, timeout: float = CLIENT_TIMEOUT) -> Message:
        self.sock.settimeout(timeout)
        data, self.last_from = self.sock.recvfrom(65535)
        message = parse_message(data)
        assert isinstance(message, Message), data
        return message

    def receive_method(self, method: str) -> Message:
        """The next request of `method`, skipping retransmissions of others."""
        while True:
            message = self.receive()
            if message.method == method:
                return message

    def answer(self, request: Message, status: int, to_tag: str | None = "uas1") -> None:
        response = request.make_response(status, to_tag=to_tag if status > 100 else None)
        assert self.last_from is not None
        self.sock.sendto(response.to_bytes(), self.last_from)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peer():
    downstream = Peer()
    yield downstream
    downstream.close()


def proxy_daemon(oversipd_daemon, workers: int = 1, **profile):
    return sip_daemon(oversipd_daemon, script=PROXY_SCRIPT, workers=workers,
                      extra_tables={"proxy.proxy_out": {**PROFILE, **profile}})


def send_invite(client: UdpClient, peer: Peer, call_id: str, extra: str = "") -> bytes:
    data = request_bytes("INVITE", port=peer.port, via_port=client.port, call_id=call_id, extra=extra)
    client.send(data)
    return data


def invite_through_the_proxy(oversipd_daemon, peer: Peer, call_id: str):
    """A proxy, a client, and the INVITE it forwarded to the peer."""
    server = proxy_daemon(oversipd_daemon)
    client = UdpClient(server)
    send_invite(client, peer, call_id)
    return server, client, peer.receive_method("INVITE")


def final_response(client: UdpClient) -> Response:
    while True:
        response = client.response()
        if response.status >= 200:
            return response


def test_an_invite_is_forwarded_with_our_via_record_route_and_max_forwards_lowered(oversipd_daemon, peer):
    server = proxy_daemon(oversipd_daemon)
    client = UdpClient(server)
    send_invite(client, peer, "call-fwd")
    assert client.response().status == 100            # at once, from the proxy
    invite = peer.receive_method("INVITE")
    top, upstream = invite.via[0], invite.via[1]
    assert top.branch.startswith("z9hG4bKosd") and (top.host, top.port) == ("127.0.0.1", server.port)
    assert upstream.port == client.port
    assert invite.max_forwards == 69
    assert invite.headers("record-route") == [f"<sip:127.0.0.1:{server.port};lr>"]
    assert peer.last_from == ("127.0.0.1", server.port)   # sent from the listener's own socket
    peer.answer(invite, 180)
    ringing = client.response()
    assert ringing.status == 180 and len(ringing.via) == 1 and ringing.via[0].port == client.port
    peer.answer(invite, 200)
    ok = final_response(client)
    assert ok.status == 200 and len(ok.via) == 1
    assert ok.headers("record-route") == [f"<sip:127.0.0.1:{server.port};lr>"]
    daemon = server.daemon
    assert daemon.wait_events("outcome", call_id="call-fwd")[0]["value"] == 200
    assert [e["status"] for e in daemon.find("provisional", call_id="call-fwd")] == [180]
    assert [e["status"] for e in daemon.find("success", call_id="call-fwd")] == [200]
    assert "[proxy.missing]" in daemon.find("key_error")[0]["text"]


def test_a_non_2xx_is_acked_hop_by_hop_and_its_retransmission_runs_no_second_callback(oversipd_daemon, peer):
    server, client, invite = invite_through_the_proxy(oversipd_daemon, peer, "call-busy")
    peer.answer(invite, 486)
    ack = peer.receive_method("ACK")
    assert ack.via[0].branch == invite.via[0].branch and len(ack.via) == 1
    assert ack.to.tag == "uas1" and ack.cseq_method == "ACK"
    assert final_response(client).status == 486
    peer.answer(invite, 486)                            # as if our ACK were lost
    assert peer.receive_method("ACK").via[0].branch == invite.via[0].branch
    client.send(request_bytes("ACK", port=peer.port, via_port=client.port, call_id="call-busy",
                              extra="ack-invite", to_tag="uas1"))   # absorbed by the server transaction
    server.daemon.wait_events("outcome", call_id="call-busy")
    assert [e["status"] for e in server.daemon.find("failure", call_id="call-busy")] == [486]


def test_a_callback_that_raises_is_logged_and_the_response_still_goes_upstream(oversipd_daemon, peer):
    server = proxy_daemon(oversipd_daemon)
    client = UdpClient(server)
    send_invite(client, peer, "call-raise", extra="X-Raise: yes")
    invite = peer.receive_method("INVITE")
    peer.answer(invite, 183)
    assert [client.response().status for _ in range(2)] == [100, 183]
    peer.answer(invite, 603)
    assert final_response(client).status == 603
    server.daemon.wait_events("outcome", call_id="call-raise")
    # The tracebacks (provisional and final callbacks) reach the log after the event: waited for, not read at once.
    server.daemon.wait_log("a callback that raises", count=2)


def test_a_silent_downstream_gets_408_upstream_and_on_invite_timeout_once(oversipd_daemon, peer):
    server = proxy_daemon(oversipd_daemon)
    client = UdpClient(server)
    send_invite(client, peer, "call-silent")
    first = peer.receive_method("INVITE")
    again = peer.receive_method("INVITE")             # Timer A: the proxy resends over UDP
    assert again.via[0].branch == first.via[0].branch
    assert final_response(client).status == 408
    daemon = server.daemon
    assert daemon.wait_events("outcome", call_id="call-silent")[0]["value"] == [408, "Request Timeout"]
    assert len(daemon.find("invite_timeout", call_id="call-silent")) == 1
    assert daemon.find("error", call_id="call-silent") == []


def test_timer_c_gives_up_a_ringing_branch_with_cancel_and_408(oversipd_daemon, peer):
    server, client, invite = invite_through_the_proxy(oversipd_daemon, peer, "call-ringing")
    peer.answer(invite, 180)
    cancel = peer.receive_method("CANCEL")             # after timer_C = 3 s
    assert cancel.via[0].branch == invite.via[0].branch and cancel.cseq == invite.cseq
    peer.answer(cancel, 200)
    assert final_response(client).status == 408
    server.daemon.wait_events("invite_timeout", call_id="call-ringing")


def test_retransmissions_of_a_2xx_go_upstream_without_a_second_callback(oversipd_daemon, peer):
    server, client, invite = invite_through_the_proxy(oversipd_daemon, peer, "call-2xx-again")
    peer.answer(invite, 200)
    assert final_response(client).status == 200
    peer.answer(invite, 200)                          # the callee resends it until the ACK (32 s for us)
    again = client.response()
    assert again.status == 200 and len(again.via) == 1 and again.via[0].port == client.port
    daemon = server.daemon
    daemon.wait_events("outcome", call_id="call-2xx-again")
    assert len(daemon.find("success", call_id="call-2xx-again")) == 1


def test_a_later_provisional_response_restarts_timer_c(oversipd_daemon, peer):
    server, client, invite = invite_through_the_proxy(oversipd_daemon, peer, "call-ringing-again")
    peer.answer(invite, 180)
    assert [client.response().status for _ in range(2)] == [100, 180]
    time.sleep(TIMER_C / 2)                           # the scenario: ringing goes on, then a 183
    peer.answer(invite, 183)
    restarted = time.monotonic()
    assert client.response().status == 183
    cancel = peer.receive_method("CANCEL")
    assert time.monotonic() - restarted >= TIMER_C - 0.05   # Timer C counts from the 183, not the 180
    peer.answer(cancel, 200)
    assert final_response(client).status == 408


def test_a_non_invite_timeout_is_an_error_with_408(oversipd_daemon, peer):
    server = proxy_daemon(oversipd_daemon)
    client = UdpClient(server)
    client.send(request_bytes("OPTIONS", port=peer.port, via_port=client.port, call_id="opt-silent"))
    peer.receive_method("OPTIONS")
    assert client.response().status == 408
    event = server.daemon.wait_events("error", call_id="opt-silent")[0]
    assert (event["status"], event["reason"]) == (408, "Request Timeout")


def test_cancel_from_upstream_is_answered_and_propagated_and_the_call_ends_487(oversipd_daemon, peer):
    server = proxy_daemon(oversipd_daemon)
    client = UdpClient(server)
    data = send_invite(client, peer, "call-cancel")
    invite = peer.receive_method("INVITE")
    peer.answer(invite, 180)
    assert [client.response().status for _ in range(2)] == [100, 180]
    client.send(data.replace(b"INVITE sip", b"CANCEL sip").replace(b" INVITE\r\n", b" CANCEL\r\n"))
    assert client.response().status == 200            # the CANCEL's own answer
    cancel = peer.receive_method("CANCEL")
    assert cancel.via[0].branch == invite.via[0].branch
    peer.answer(cancel, 200)
    peer.answer(invite, 487)
    assert peer.receive_method("ACK").cseq == invite.cseq
    assert final_response(client).status == 487
    daemon = server.daemon
    assert daemon.wait_events("outcome", call_id="call-cancel")[0]["value"] == 487
    assert len(daemon.find("canceled", call_id="call-cancel")) == 1


def test_a_loop_through_ourselves_gets_482(oversipd_daemon):
    server = proxy_daemon(oversipd_daemon)
    client = UdpClient(server)
    # The Request-URI names the proxy itself with another user: it forwards to itself once.
    client.send(request_bytes("OPTIONS", port=server.port, via_port=client.port, user="loop"))
    assert client.response().status == 482


def test_with_two_workers_every_response_reaches_the_worker_holding_its_transaction(oversipd_daemon, peer):
    server = proxy_daemon(oversipd_daemon, workers=2)
    clients = [UdpClient(server) for _ in range(16)]   # many source ports: both workers route some
    for number, client in enumerate(clients):
        client.send(request_bytes("OPTIONS", port=peer.port, via_port=client.port, call_id=f"opt-{number}"))
    for _ in clients:
        peer.answer(peer.receive_method("OPTIONS"), 200)
    assert [client.response().status for client in clients] == [200] * len(clients)
    events = server.daemon.wait_events("success", count=len(clients))
    assert {e["worker"] for e in server.daemon.find("request")} == {1, 2}
    assert sorted(e["call_id"] for e in events) == sorted(f"opt-{n}" for n in range(len(clients)))


def test_a_request_changing_transport_gets_two_record_routes_and_register_gets_path(oversipd_daemon, peer):
    server = proxy_daemon(oversipd_daemon)
    with socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT) as tcp:
        local_port = tcp.getsockname()[1]
        tcp.sendall(request_bytes("INVITE", port=peer.port, via_port=local_port, transport="TCP",
                                  call_id="call-tcp-udp"))
        invite = peer.receive_method("INVITE")
        outer, inner = invite.headers("record-route")
        assert outer == f"<sip:127.0.0.1:{server.port};lr>"
        # The caller's side names its connection (a flow token, tests/test_sip_flows.py).
        assert inner.startswith("<sip:ovf") and inner.endswith(f"@127.0.0.1:{server.port};transport=tcp;lr>")
        peer.answer(invite, 486)
    client = UdpClient(server)
    client.send(request_bytes("REGISTER", port=peer.port, via_port=client.port))
    register = peer.receive_method("REGISTER")
    assert register.headers("path") == [f"<sip:127.0.0.1:{server.port};lr>"]
    assert register.headers("record-route") == []


def test_the_next_hop_is_a_loose_router_s_route_or_a_strict_router_taking_the_request_uri():
    from oversipd.sip.proxy.engine import next_hop

    def message(routes: str):
        return parse_message(("INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
                              f"{routes}From: <sip:a@x>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
                              "Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode())
    plain = message("")
    assert str(next_hop(plain)) == "sip:bob@example.com"
    loose = message("Route: <sip:10.0.0.5;lr>, <sip:10.0.0.6;lr>\r\n")
    assert str(next_hop(loose)) == "sip:10.0.0.5;lr" and len(loose.headers("route")) == 2
    strict = message("Route: <sip:10.0.0.7>, <sip:10.0.0.8;lr>\r\n")
    assert str(next_hop(strict)) == "sip:10.0.0.7"
    assert str(strict.ruri) == "sip:10.0.0.7"
    assert strict.headers("route") == ["<sip:10.0.0.8;lr>", "<sip:bob@example.com>"]


class AnsweringPeer(Peer):
    """A downstream peer that answers every request it gets, retransmissions too, until closed."""

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self.stopped = threading.Event()
        self.sock.settimeout(0.1)   # how soon close() is noticed
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            request = parse_message(data)
            if isinstance(request, Message) and request.method != "ACK":
                self.sock.sendto(request.make_response(self.status, to_tag="uas1").to_bytes(), source)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        super().close()


def options_from_many_ports(server, peer, count: int = 16, prefix: str = "opt") -> list[int]:
    clients = [UdpClient(server) for _ in range(count)]
    for number, client in enumerate(clients):
        client.send(request_bytes("OPTIONS", port=peer.port, via_port=client.port, call_id=f"{prefix}-{number}"))
    statuses = [client.response().status for client in clients]
    for client in clients:
        client.close()
    return statuses


def test_responses_reach_their_transaction_after_a_worker_respawn_and_a_new_generation(oversipd_daemon):
    peer = AnsweringPeer()
    try:
        server = proxy_daemon(oversipd_daemon, workers=2, timer_F=10)
        daemon = server.daemon
        daemon.kill_worker(1)
        daemon.wait_workers(2)
        assert options_from_many_ports(server, peer, prefix="respawned") == [200] * 16
        assert {e["worker"] for e in daemon.find("request")} == {1, 2}
        mark = daemon.mark()
        (daemon.modules_dir / "touch.py").write_text("# a new drop-in: a new generation of workers\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reload done: generation 2 serves", since=mark)
        assert options_from_many_ports(server, peer, prefix="new") == [200] * 16
        assert len(daemon.wait_events("success", count=32)) == 32
    finally:
        peer.close()


def test_a_call_ringing_through_a_reload_still_connects_through_the_retiring_worker(oversipd_daemon, peer):
    server = proxy_daemon(oversipd_daemon, workers=2, timer_B=30, timer_C=60)
    daemon = server.daemon
    client = UdpClient(server)
    try:
        send_invite(client, peer, "ringing-over-reload")
        invite = peer.receive_method("INVITE")
        peer.answer(invite, 180)
        assert client.response().status == 100 and client.response().status == 180
        (routed,) = daemon.find("request", call_id="ringing-over-reload")
        mark = daemon.mark()
        (daemon.modules_dir / "touch.py").write_text("# a new drop-in: a new generation of workers\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("retiring: no new SIP request is read here", since=mark, count=2)
        # The callee answers now: its 200 reaches whichever new worker reads that
        # socket, and goes on to the retiring one, which holds the transaction.
        peer.answer(invite, 200)
        assert final_response(client).status == 200
        (success,) = daemon.wait_events("success", call_id="ringing-over-reload")
        assert success["pid"] == routed["pid"]
        daemon.wait_log("reload done: generation 2 serves", since=mark)
    finally:
        client.close()


def test_a_2xx_whose_worker_died_after_forwarding_the_invite_still_reaches_the_caller(oversipd_daemon, peer):
    """RFC 3261 §16.7: a response that no transaction knows is forwarded statelessly, by its Via."""
    server, client, invite = invite_through_the_proxy(oversipd_daemon, peer, "call-orphan")
    assert client.response().status == 100
    daemon = server.daemon
    mark = daemon.mark()
    daemon.kill_worker(1, signal.SIGKILL)        # its client transaction and accepted branches are gone
    daemon.wait_log("killed by SIGKILL; respawned", since=mark)
    daemon.wait_workers(1)
    peer.answer(invite, 200)
    ok = final_response(client)
    assert ok.status == 200 and len(ok.via) == 1 and ok.via[0].port == client.port
