"""SIP.md §12: SIP over WebSocket (RFC 7118) — the upgrade, messages and frames, events, pings, hostile peers."""

from __future__ import annotations

import base64
import os
import socket
import struct

import psutil
import pytest
from websockets.exceptions import InvalidStatus

from oversipd.sip.syntax.message import parse_message

from secure_helpers import make_pki, secure_daemon, ws_client, ws_request
from sip_helpers import CLIENT_TIMEOUT, request_bytes

EVENTS_SCRIPT = """
from oversipd import SipEvents, WebSocketEvents
from oversipd.testing import record

@WebSocketEvents.on_connection
def on_ws(connection, http_request):
    record("connection", transport=connection.transport, path=http_request.path,
           origin=http_request.header("Origin"))
    if http_request.query.get("t") == "blocked":
        connection.reject(403, "Forbidden")
    connection.cvars["tenant"] = http_request.query.get("t")

@WebSocketEvents.on_disconnection
def on_ws_gone(connection, client_closed):
    record("disconnection", client_closed=client_closed, tenant=connection.cvars.get("tenant"))

@SipEvents.on_request
def on_request(request):
    record("request", method=request.sip_method, transport=request.transport, secure=request.secure,
           websocket=request.websocket, tenant=request.connection.cvars.get("tenant"),
           body=request.body.decode())
    request.reply(200)
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_options_over_a_websocket_with_the_connection_events(oversipd_daemon, pki, scheme):
    server = secure_daemon(oversipd_daemon, pki, script=EVENTS_SCRIPT)
    with ws_client(server, scheme, pki, additional_headers={"Origin": "https://app.example.com"}) as client:
        client.close_timeout = CLIENT_TIMEOUT
        response = ws_request(client, server, transport=scheme.upper())
        assert response.status == 200
        assert response.header("via").startswith(f"SIP/2.0/{scheme.upper()} ")
    connection = server.daemon.wait_events("connection")[0]
    assert (connection["transport"], connection["origin"]) == (scheme, "https://app.example.com")
    request = server.daemon.wait_events("request")[0]
    assert (request["transport"], request["secure"], request["websocket"], request["tenant"]) == \
        (scheme, scheme == "wss", True, None)
    assert server.daemon.wait_events("disconnection")[0]["client_closed"] is True


def test_the_connection_cvars_and_a_refusal_by_the_script(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, script=EVENTS_SCRIPT)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect_path(server, "/?t=blocked")
    assert refused.value.response.status_code == 403
    with ws_connect_path(server, "/sip?t=acme") as client:
        assert ws_request(client, server).status == 200
    assert server.daemon.wait_events("request")[0]["tenant"] == "acme"


def ws_connect_path(server, path):
    from websockets.sync.client import connect
    return connect(f"ws://127.0.0.1:{server.port_of('ws')}{path}", subprotocols=["sip"],
                   open_timeout=CLIENT_TIMEOUT)


def test_a_message_in_fragments_and_binary_frames_is_one_sip_message(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, script=EVENTS_SCRIPT)
    data = request_bytes("MESSAGE", port=server.port_of("ws"), via_port=9, transport="WS", body=b"hello")
    with ws_client(server) as client:
        client.send(iter([data[:40], data[40:100], data[100:]]))   # three frames, one message
        assert parse_message(client.recv(timeout=CLIENT_TIMEOUT).encode()).status == 200
        client.send(request_bytes("MESSAGE", port=server.port_of("ws"), via_port=9, transport="WS",
                                  body=b"binary"))   # bytes: a binary frame
        assert parse_message(_bytes(client.recv(timeout=CLIENT_TIMEOUT))).status == 200
    bodies = [event["body"] for event in server.daemon.wait_events("request", count=2)]
    assert bodies == ["hello", "binary"]


def _bytes(data):
    return data.encode() if isinstance(data, str) else data


@pytest.mark.parametrize("headers, status", [
    ({"Origin": "https://app.example.com"}, 400),               # no Sec-WebSocket-Protocol: sip
    ({"Sec-WebSocket-Protocol": "sip", "Origin": "https://evil.example"}, 403),
    ({"Sec-WebSocket-Protocol": "sip", "Origin": "https://app.example.com", "Sec-WebSocket-Version": "8"}, 426),
], ids=["no sip subprotocol", "origin not allowed", "bad version"])
def test_a_bad_upgrade_is_refused_with_an_http_error(oversipd_daemon, pki, headers, status):
    server = secure_daemon(oversipd_daemon, pki, websocket={"allowed_origins": ["https://app.example.com"]})
    with RawWebSocket(server, headers) as raw:
        assert raw.status == status
        assert raw.read_to_end() is not None   # then the connection ends


def test_another_method_is_refused(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki)
    with socket.create_connection(("127.0.0.1", server.port_of("ws")), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        answer = RawWebSocket.drain(sock)
    assert answer.startswith(b"HTTP/1.1 4") and b"101" not in answer.split(b"\r\n")[0]


def test_a_peer_that_stops_answering_pings_is_closed(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, script=EVENTS_SCRIPT,
                           websocket={"ping_interval": 0.2, "pong_timeout": 0.3})
    with RawWebSocket(server, {"Sec-WebSocket-Protocol": "sip"}) as raw:
        assert raw.status == 101
        frames = raw.read_to_end()   # we never answer: a ping comes, then the end
    assert frames[:1] == b"\x89"
    assert server.daemon.wait_events("disconnection")[0]["client_closed"] is False


def test_pings_answered_keep_the_connection(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, websocket={"ping_interval": 0.2, "pong_timeout": 0.5})
    with RawWebSocket(server, {"Sec-WebSocket-Protocol": "sip"}) as raw:
        assert raw.status == 101
        for _ in range(5):   # 1 s: twice the pong_timeout
            opcode, payload = raw.read_frame()
            assert opcode == 0x9
            raw.sock.sendall(frame(0xA, payload))
        raw.sock.sendall(frame(0x1, request_bytes("OPTIONS", port=server.port_of("ws"), via_port=9,
                                                  transport="WS")))
        while (received := raw.read_frame())[0] == 0x9:
            raw.sock.sendall(frame(0xA, received[1]))
        assert parse_message(received[1]).status == 200


def test_hostile_websocket_peers_leave_the_worker_alive_with_flat_descriptors(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, tls={"handshake_timeout": 0.5},
                           websocket={"max_message_size": 2048, "ping_interval": 0})
    pid = server.daemon.worker_pids()[1]
    worker = psutil.Process(pid)
    with ws_client(server) as warm:   # the first connection's lazy allocations are not a leak
        assert ws_request(warm, server).status == 200
    descriptors = worker.num_fds()
    attacks = {
        "unmasked": frame(0x1, b"OPTIONS", masked=False),
        "oversize": frame(0x1, b"x" * 4096),
        "fragment storm": b"".join([frame(0x1, b"x", fin=False)] + [frame(0x0, b"y" * 50, fin=False)] * 100),
        "reserved opcode": frame(0x3, b"?"),
        "bad close": frame(0x8, b"\x03"),
        "garbage": os.urandom(2000),
    }
    closes = {}
    for name, attack in attacks.items():
        with RawWebSocket(server, {"Sec-WebSocket-Protocol": "sip"}) as raw:
            assert raw.status == 101
            raw.sock.sendall(attack)
            closes[name] = close_code(raw.read_to_end())
    assert closes["oversize"] == 1009 and closes["fragment storm"] == 1009
    assert closes["unmasked"] == 1002 and closes["reserved opcode"] == 1002
    with socket.create_connection(("127.0.0.1", server.port_of("ws")), timeout=CLIENT_TIMEOUT) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")   # a slowloris upgrade that never ends
        assert RawWebSocket.drain(slow) == b""            # closed at handshake_timeout
    with ws_client(server) as client:
        assert ws_request(client, server).status == 200
    assert server.daemon.worker_pids()[1] == pid
    wait_for_descriptors(worker, descriptors)


def wait_for_descriptors(worker, expected):
    """The worker's descriptors back where they were (the last close is seen by the worker just after ours)."""
    import time
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while worker.num_fds() > expected and time.monotonic() < deadline:
        time.sleep(0.02)   # polling a count the kernel gives no event for
    assert worker.num_fds() <= expected


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """One WebSocket frame as a client sends it (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack(">H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


def close_code(frames: bytes) -> int | None:
    """The code of the close frame among what the server sent (server frames are not masked)."""
    at = 0
    while at + 2 <= len(frames):
        opcode, length = frames[at] & 0x0F, frames[at + 1] & 0x7F
        at += 2
        if length == 126:
            length, at = struct.unpack(">H", frames[at:at + 2])[0], at + 2
        elif length == 127:
            length, at = struct.unpack(">Q", frames[at:at + 8])[0], at + 8
        if opcode == 0x8:
            return struct.unpack(">H", frames[at:at + 2])[0] if length >= 2 else None
        at += length
    return None


class RawWebSocket:
    """A hand-made client: the upgrade with chosen headers, then bytes as the test writes them."""

    def __init__(self, server, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port_of("ws")), timeout=CLIENT_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        fields = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
                  "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13", **headers}
        self.sock.sendall(("GET / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
                           + "\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, f"closed during the upgrade after {head!r}"
            head += chunk
        self.status = int(head.split(b" ", 2)[1])

    @staticmethod
    def drain(sock: socket.socket) -> bytes:
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame the server sends (unmasked, not fragmented): opcode and payload."""
        head = self.read_exactly(2)
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", self.read_exactly(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self.read_exactly(8))[0]
        return head[0] & 0x0F, self.read_exactly(length)

    def read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "closed by the server"
            data += chunk
        return data

    def read_to_end(self) -> bytes:
        return self.drain(self.sock)

    def __enter__(self) -> "RawWebSocket":
        return self

    def __exit__(self, *exc_info) -> None:
        self.sock.close()
