"""SIP.md §12 with §10: proxying to and from TLS and WebSocket clients — Record-Route/Path, flows, 430.

The clients are real peers (Python ssl sockets, a websockets client); the
registrar and the callers are UDP sockets of the test, as in
test_sip_flows.py.
"""

from __future__ import annotations

import contextlib

import pytest

from oversipd.sip.syntax.message import Request as Message, parse_message

from secure_helpers import make_pki, secure_daemon, tls_connect, ws_client
from sip_helpers import CLIENT_TIMEOUT, StreamReader, UdpClient, request_bytes
from test_sip_flows import FLOW_SCRIPT, PROFILE, UNREACHABLE_CONTACT, final_status, message_for_client
from test_sip_proxy import Peer


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def registrar():
    peer = Peer()
    yield peer
    peer.close()


class SecureUser:
    """A client over tls, ws or wss that sends requests and answers 200 to those that reach it."""

    def __init__(self, server, scheme: str, pki) -> None:
        self.scheme = scheme
        self.server = server
        self.closing = contextlib.ExitStack()
        if scheme == "tls":
            self.sock = tls_connect(server, pki.client_context())
            self.reader = StreamReader(self.sock)
            self.local_port = self.sock.getsockname()[1]
        else:
            self.ws = self.closing.enter_context(ws_client(server, scheme, pki))
            self.local_port = 9   # RFC 7118: the Via of a WebSocket client names no reachable port

    def send(self, data: bytes) -> None:
        if self.scheme == "tls":
            self.sock.sendall(data)
        else:
            self.ws.send(data.decode())

    def receive(self) -> Message:
        if self.scheme == "tls":
            return parse_message(self.reader.message())
        data = self.ws.recv(timeout=CLIENT_TIMEOUT)
        return parse_message(data.encode() if isinstance(data, str) else data)

    def request(self, method: str, peer_port: int, **fields) -> bytes:
        data = request_bytes(method, port=peer_port, via_port=self.local_port, transport=self.scheme.upper(),
                             **fields)
        self.send(data)
        return data

    def register(self, registrar: Peer) -> Message:
        """REGISTER through the proxy; return what the registrar got (its Path reaches us)."""
        self.request("REGISTER", registrar.port, call_id=f"register-{self.scheme}",
                     extra=f"Contact: <{UNREACHABLE_CONTACT}>")
        at_registrar = registrar.receive_method("REGISTER")
        registrar.answer(at_registrar, 200)
        assert self.receive().status == 200
        return at_registrar

    def answer_one(self) -> Message:
        request = self.receive()
        self.send(request.make_response(200, to_tag="secure").to_bytes())
        return request

    def close(self) -> None:
        if self.scheme == "tls":
            self.sock.close()
        else:
            self.closing.close()


def secure_proxy(oversipd_daemon, pki, workers: int = 1):
    return secure_daemon(oversipd_daemon, pki, script=FLOW_SCRIPT, workers=workers,
                         extra_tables={"proxy.proxy_out": PROFILE})


@pytest.mark.parametrize("scheme", ["tls", "ws", "wss"])
def test_a_registered_client_is_reached_over_its_connection(oversipd_daemon, pki, registrar, scheme):
    server = secure_proxy(oversipd_daemon, pki)
    user = SecureUser(server, scheme, pki)
    try:
        path = user.register(registrar).header("path")
        assert path is not None and ";ob" in path and "ovf" in path
        caller = UdpClient(server)
        caller.send(message_for_client(path, caller.port, f"to-{scheme}"))
        reached = user.answer_one()
        assert reached.via[0].transport == scheme.upper()
        assert reached.via[0].port == server.port_of(scheme)
        assert final_status(caller) == 200
        caller.close()
    finally:
        user.close()


@pytest.mark.parametrize("scheme", ["tls", "ws", "wss"])
def test_an_invite_that_changes_transport_is_record_routed_twice(oversipd_daemon, pki, peer_udp, scheme):
    server = secure_proxy(oversipd_daemon, pki)
    user = SecureUser(server, scheme, pki)
    try:
        user.request("INVITE", peer_udp.port, call_id=f"rr-{scheme}")
        invite = peer_udp.receive_method("INVITE")
        routes = invite.headers("record-route")
        assert len(routes) == 2
        assert f";transport={scheme}" not in routes[0] and "ovf" not in routes[0]   # the UDP side, on top
        assert f"127.0.0.1:{server.port_of(scheme)};transport={scheme};lr" in routes[1]
        assert "ovf" in routes[1]   # the flow of the client's connection
        peer_udp.answer(invite, 486)
        while (response := user.receive()).status < 200:
            pass
        assert response.status == 486
    finally:
        user.close()


@pytest.fixture
def peer_udp():
    peer = Peer()
    yield peer
    peer.close()


def test_a_tls_flow_dies_with_its_worker_and_a_reconnected_client_is_served(oversipd_daemon, pki, registrar):
    """PITFALLS: the TLS session is the worker's; meanwhile requests for the dead flow get 430."""
    server = secure_proxy(oversipd_daemon, pki)
    daemon = server.daemon
    user = SecureUser(server, "tls", pki)
    old_path = user.register(registrar).header("path")
    mark = daemon.mark()
    daemon.kill_worker(1)
    daemon.wait_log("killed by SIGKILL; respawned", since=mark)
    with pytest.raises((EOFError, OSError)):
        user.receive()   # the connection ended with the worker
    user.close()
    caller = UdpClient(server)
    try:
        caller.send(message_for_client(old_path, caller.port, "dead-flow"))
        assert final_status(caller) == 430
        again = SecureUser(server, "tls", pki)
        try:
            new_path = again.register(registrar).header("path")
            assert new_path != old_path
            caller.send(message_for_client(new_path, caller.port, "new-flow"))
            again.answer_one()
            assert final_status(caller) == 200
        finally:
            again.close()
    finally:
        caller.close()
