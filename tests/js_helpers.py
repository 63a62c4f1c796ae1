"""Shared by the tests whose SIP peers run under Node (tests/js): JsSIP and SIP.js behind oversipd, Kamailio.

A client script (tests/js/*.js, *.mjs) registers over WS or WSS through
oversipd (FLOW_SCRIPT: everything to [proxy.proxy_out]) to a Kamailio
registrar that keeps oversipd's Path; it answers each MESSAGE and sends
one back.  It prints one line per event: "registered", "message <from>
<body>", "sent", "failed <cause>"; it stops when its stdin closes.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from oversipd.sip.syntax.message import Request as Message, Response, parse_message

from listen_helpers import free_port
from secure_helpers import Pki, SecureServer, make_pki, secure_daemon, ws_url
from sip_helpers import CLIENT_TIMEOUT
from test_sip_flows import FLOW_SCRIPT, PROFILE

JS_DIR = Path(__file__).resolve().parent / "js"
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
REGISTRAR_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "path.so"
loadmodule "textops.so"
modparam("registrar", "use_path", 1)
modparam("registrar", "path_mode", 2)
request_route {{
    if (is_method("REGISTER")) {{
        save("location");
        exit;
    }}
    if (!lookup("location")) {{
        sl_send_reply("404", "Not Found");
        exit;
    }}
    t_relay();
}}
"""


@pytest.fixture
def kamailio(tmp_path):
    port = free_port("udp")
    config = tmp_path / "registrar.cfg"
    config.write_text(REGISTRAR_CFG.format(port=port, modules=KAMAILIO_MODULES))
    process = subprocess.Popen([KAMAILIO, "-f", str(config), "-DD", "-E", "-m", "32", "-M", "4",
                                "-Y", str(tmp_path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_sip_answer(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(CLIENT_TIMEOUT)
        process.stderr.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def wait_for_sip_answer(port: int, process: subprocess.Popen) -> None:
    """Until Kamailio answers an OPTIONS (any response): its UDP listener is serving."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        for attempt in range(int(CLIENT_TIMEOUT / 0.2)):
            assert process.poll() is None, process.stderr.read().decode(errors="replace")
            probe.sendto(sip_request("OPTIONS", f"sip:127.0.0.1:{port}", probe.getsockname()[1]),
                         ("127.0.0.1", port))
            probe.settimeout(0.2)   # a datagram may come before the listener: asked again
            try:
                probe.recvfrom(65535)
                return
            except socket.timeout:
                continue
    raise AssertionError("Kamailio never answered")


def sip_request(method: str, uri: str, local_port: int, body: bytes = b"", call_id: str | None = None) -> bytes:
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{uuid.uuid4().hex};rport",
             f"From: <sip:caller@127.0.0.1:{local_port}>;tag=caller1",
             f"To: <{uri}>",
             f"Call-ID: {call_id or uuid.uuid4().hex}",
             f"CSeq: 1 {method}",
             "Max-Forwards: 70",
             "Content-Type: text/plain",
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class NodeSipUser:
    """`node tests/js/SCRIPT WS_URL AOR REGISTRAR`: its stdout lines, one per event.

    `ca_file`: the CA that a wss:// server's certificate chains to (Node's
    NODE_EXTRA_CA_CERTS: the certificate is checked, not ignored).
    """

    def __init__(self, script: str, ws_url: str, aor: str, registrar: str, ca_file: str | None = None) -> None:
        environment = None if ca_file is None else {**os.environ, "NODE_EXTRA_CA_CERTS": ca_file}
        self.process = subprocess.Popen(["node", str(JS_DIR / script), ws_url, aor, registrar],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=environment)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next_event(self) -> str:
        """The next line that is an event (the library's own chatter, if any, skipped)."""
        while True:
            line = self.lines.get(timeout=CLIENT_TIMEOUT)
            if line.split(" ", 1)[0] in ("registered", "message", "sent", "failed"):
                return line

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()   # the script stops its UA and exits
        try:
            self.process.wait(CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def register_and_exchange_messages(oversipd_daemon, pki: Pki, kamailio: int, script: str, scheme: str) -> None:
    """`script` registers over `scheme` (ws, wss) through oversipd to Kamailio; a MESSAGE each way.

    A caller's MESSAGE to the user goes to Kamailio, which routes it by
    oversipd's Path back over the WebSocket; the client answers it and
    sends a MESSAGE back to the caller through oversipd.
    """
    assert (JS_DIR / "node_modules").is_dir(), "npm packages missing: `make test` runs npm ci"
    server = secure_daemon(oversipd_daemon, pki, script=FLOW_SCRIPT, extra_tables={"proxy.proxy_out": PROFILE})
    user = NodeSipUser(script, ws_url(server, scheme), "sip:alice@example.test", f"sip:127.0.0.1:{kamailio}",
                       ca_file=pki.ca_file if scheme == "wss" else None)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(CLIENT_TIMEOUT)
    try:
        assert user.next_event() == "registered"
        caller_port = caller.getsockname()[1]
        caller.sendto(sip_request("MESSAGE", f"sip:alice@127.0.0.1:{kamailio}", caller_port, b"hello"),
                      ("127.0.0.1", kamailio))
        assert user.next_event() == f"message sip:caller@127.0.0.1:{caller_port} hello"
        answer, echo = exchange(caller, server)
        assert answer.status == 200
        assert echo.body == b"echo hello" and echo.via[-1].transport == scheme.upper()
        assert user.next_event() == "sent"
    finally:
        caller.close()
        user.stop()
    transports = {event["transport"] for event in server.daemon.find("request")}
    assert transports == {scheme, "udp"}


def exchange(caller: socket.socket, server: SecureServer) -> tuple[Response, Message]:
    """The client's 200 to our MESSAGE (via Kamailio) and its own MESSAGE (via oversipd), which we answer."""
    answer, echo = None, None
    while answer is None or echo is None:
        message = parse_message(caller.recvfrom(65535)[0])
        if isinstance(message, Response) and message.status >= 200:
            answer = message
        elif isinstance(message, Message) and message.method == "MESSAGE":
            echo = message
            caller.sendto(message.make_response(200, to_tag="caller2").to_bytes(), ("127.0.0.1", server.port))
    return answer, echo
