"""SIP.md §12 with §10: proxying to and from TLS and WebSocket clients — Record-Route/Path, flows, 430.

The clients are real peers (Python ssl sockets, a websockets client); the
registrar and the callers are UDP sockets of the test, as in
test_sip_flows.py.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import threading

import pytest
from websockets.exceptions import ConnectionClosed

from oversipd.sip.syntax.message import Request as Message, parse_message

from secure_helpers import make_pki, secure_daemon, tls_connect, ws_client
from sip_helpers import CLIENT_TIMEOUT, StreamReader, UdpClient, request_bytes
from test_sip_flows import (FLOW_SCRIPT, PROFILE, UNREACHABLE_CONTACT, final_status, message_for_client,
                            messages_until_both_workers_routed)
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
        self.answering: threading.Thread | None = None
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

    def answer_everything(self) -> None:
        """From now on, in a thread: 200 to every request that reaches us, until the connection ends."""
        def serve() -> None:
            try:
                while True:
                    self.answer_one()
            except Exception:   # the end of the connection, whichever way the client library says it
                return
        self.answering = threading.Thread(target=serve, daemon=True)
        self.answering.start()

    def close(self) -> None:
        if self.scheme == "tls":
            try:
                self.sock.shutdown(socket.SHUT_RDWR)   # wakes an answering thread's read; close() alone does not
            except OSError:
                pass
            self.sock.close()
        else:
            self.closing.close()
        if self.answering is not None:
            self.answering.join(CLIENT_TIMEOUT)


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


@pytest.mark.parametrize("scheme", ["tls", "wss"])
def test_a_client_is_reached_from_every_worker_over_the_relay(oversipd_daemon, pki, registrar, scheme):
    server = secure_proxy(oversipd_daemon, pki, workers=2)
    user = SecureUser(server, scheme, pki)
    try:
        path = user.register(registrar).header("path")
        user.answer_everything()
        statuses = messages_until_both_workers_routed(server, path, f"relay-{scheme}")
        assert statuses == [200] * len(statuses)
    finally:
        user.close()


@pytest.mark.parametrize("scheme", ["tls", "ws", "wss"])
def test_a_message_from_a_secure_client_is_proxied_and_answered(oversipd_daemon, pki, peer_udp, scheme):
    server = secure_proxy(oversipd_daemon, pki)
    user = SecureUser(server, scheme, pki)
    try:
        user.request("MESSAGE", peer_udp.port, call_id=f"out-{scheme}", body=b"hi")
        message = peer_udp.receive_method("MESSAGE")
        assert message.body == b"hi" and message.via[0].transport == "UDP"
        assert message.via[1].transport == scheme.upper()
        peer_udp.answer(message, 200)
        assert user.receive().status == 200
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


class TlsPeer:
    """A TLS SIP server (the next hop): accepts connections, answers 200 to every request, counts connections."""

    def __init__(self, pki, name: str = "127.0.0.1") -> None:
        leaf = pki.ca.issue_cert(name)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(self.context)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.received: list[Message] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve_connection, args=(raw,), daemon=True).start()

    def serve_connection(self, raw) -> None:
        try:
            sock = self.context.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        self.connections += 1
        reader = StreamReader(sock)
        try:
            while True:
                request = parse_message(reader.message())
                self.received.append(request)
                sock.sendall(request.make_response(200, to_tag="tlspeer").to_bytes())
        except (EOFError, OSError):
            sock.close()

    def close(self) -> None:
        self.listener.close()


def sips_message(caller: UdpClient, peer_port: int, call_id: str) -> bytes:
    return request_bytes("MESSAGE", port=peer_port, via_port=caller.port, call_id=call_id).replace(
        b"MESSAGE sip:", b"MESSAGE sips:", 1)


def test_a_sips_target_leaves_over_tls_on_one_reused_connection(oversipd_daemon, pki):
    server = secure_proxy(oversipd_daemon, pki)
    peer = TlsPeer(pki)
    caller = UdpClient(server)
    try:
        for number in range(3):
            caller.send(sips_message(caller, peer.port, f"sips-{number}"))
            assert final_status(caller) == 200
        assert peer.connections == 1
        assert {request.via[0].transport for request in peer.received} == {"TLS"}
        assert {request.via[0].port for request in peer.received} == {server.port_of("tls")}
    finally:
        caller.close()
        peer.close()


@pytest.mark.parametrize("verify_server, status", [(True, 503), (False, 200)])
def test_a_server_certificate_for_another_name_is_refused_per_verify_server(oversipd_daemon, pki,
                                                                           verify_server, status):
    server = secure_daemon(oversipd_daemon, pki, script=FLOW_SCRIPT, tls={"verify_server": verify_server},
                           extra_tables={"proxy.proxy_out": PROFILE})
    peer = TlsPeer(pki, name="sip.example.org")
    caller = UdpClient(server)
    try:
        caller.send(sips_message(caller, peer.port, "wrong-name"))
        assert final_status(caller) == status
    finally:
        caller.close()
        peer.close()


def test_the_server_tls_handshake_event_may_close_the_connection(oversipd_daemon, pki):
    script = FLOW_SCRIPT + """
from oversipd import SipEvents

@SipEvents.on_server_tls_handshake
def on_server_tls(connection, certificates):
    record("server_tls", transport=connection.transport, certificates=len(certificates))
    connection.close()
"""
    profile = {**PROFILE, "callback_on_server_tls_handshake": True}
    server = secure_daemon(oversipd_daemon, pki, script=script, extra_tables={"proxy.proxy_out": profile})
    peer = TlsPeer(pki)
    caller = UdpClient(server)
    try:
        caller.send(sips_message(caller, peer.port, "refused-by-script"))
        assert final_status(caller) == 503
        assert server.daemon.wait_events("server_tls")[0]["certificates"] == 1
        assert peer.received == []
    finally:
        caller.close()
        peer.close()


def test_a_new_generation_ends_the_old_workers_ws_connections_and_serves_new_ones(oversipd_daemon, pki,
                                                                                  registrar):
    """docs/tls-websocket.md: a WebSocket's state cannot be handed over; its client reconnects."""
    server = secure_proxy(oversipd_daemon, pki)
    daemon = server.daemon
    user = SecureUser(server, "ws", pki)
    try:
        user.register(registrar)
        mark = daemon.mark()
        (daemon.modules_dir / "touch.py").write_text("# a new drop-in: a new generation of workers\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reload done: generation 2 serves", since=mark)
        with pytest.raises(ConnectionClosed):
            user.receive()   # ended as the retiring worker left
    finally:
        user.close()
    again = SecureUser(server, "ws", pki)
    try:
        path = again.register(registrar).header("path")
        again.answer_everything()
        caller = UdpClient(server)
        caller.send(message_for_client(path, caller.port, "generation-2"))
        assert final_status(caller) == 200
        caller.close()
    finally:
        again.close()
