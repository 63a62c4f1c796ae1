"""SIP.md §13 UAC and §10's response names: requests the script originates, with sipp as the far end.

The script sends a MESSAGE from SystemEvents.on_started (before the SIP
service is up: it waits for it) and one per OPTIONS it receives; the
callbacks record what OverSIP's names give.
"""

from __future__ import annotations

import socket

import pytest

from sip_helpers import SIPP, Callee, UdpClient, request_bytes, sip_daemon

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is missing: `make test` installs sip-tester")

UAC_SCRIPT = """
from oversipd import SipEvents, SystemEvents
from oversipd.sip import Uac, UacRequest
from oversipd.testing import record

def names(response):
    return dict(status_code=response.status_code, reason_phrase=response.reason_phrase,
                status=response.status, reason=response.reason, x_uas=response.header("X-Uas"),
                vias=len(response.headers("Via")), body=response.body.decode(), cseq=response.header("CSeq"))

def message(target, label, body=b"hi"):
    uac = Uac("proxy_out")
    uac.on_provisional_response(lambda r: record("provisional", label=label))
    uac.on_success_response(lambda r: record("success", label=label, **names(r)))
    uac.on_failure_response(lambda r: record("failure", label=label, status=r.status_code))
    uac.on_error(lambda status, reason: record("error", label=label, status=status, reason=reason))
    outcome = uac.route(UacRequest("MESSAGE", target, from_="sip:bot@example.com", body=body,
                                   headers={"Content-Type": "text/plain"}))
    outcome.add_done_callback(lambda f: record(
        "outcome", label=label, value=list(f.result()) if isinstance(f.result(), tuple) else f.result().status_code))

@SystemEvents.on_started
def started():
    if TARGET:
        message(TARGET, "started")

def misuse(make):
    try:
        make()
    except ValueError as error:
        record("misuse", error=str(error))

@SipEvents.on_request
def on_request(request):
    if request.header("X-Misuse"):
        misuse(lambda: UacRequest("ACK", "sip:alice@127.0.0.1"))
        misuse(lambda: Uac("proxy_out").route(UacRequest("MESSAGE", "sip:alice@127.0.0.1",
                                                         headers={"X-Bad": "a\\r\\nb"})))
    target = request.header("X-Send-To")
    if target:
        message(target, "request")
    request.reply(200)
"""

PROFILE = {"timer_F": 1, "use_dns": False, "transport_preference": ["udp"], "do_record_routing": True}


def uac_daemon(oversipd_daemon, target: str | None = None):
    script = f"TARGET = {target!r}\n" + UAC_SCRIPT
    return sip_daemon(oversipd_daemon, script=script, extra_tables={"proxy.proxy_out": PROFILE})


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_message_sent_from_on_started_gets_its_200_and_callbacks_with_oversips_names(oversipd_daemon, transport):
    uas = Callee("message_uas.xml", transport=transport[0] + "1", calls=1)
    try:
        server = uac_daemon(oversipd_daemon, f"sip:alice@127.0.0.1:{uas.port};transport={transport}")
        status, output = uas.finish()
        assert status == 0, output
        [success] = server.daemon.wait_events("success")
        assert success["label"] == "started"
        assert (success["status_code"], success["reason_phrase"]) == (200, "OK")
        assert (success["status"], success["reason"]) == (200, "OK")        # the aliases
        assert success["x_uas"] == "sipp" and success["body"].startswith("pong")
        assert success["vias"] == 0 and success["cseq"] == "1 MESSAGE"      # our Via is taken off
        [outcome] = server.daemon.wait_events("outcome")
        assert outcome["value"] == 200
    finally:
        uas.stop()


@pytest.fixture
def far_end():
    """A UDP socket that reads what the UAC sends and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(15)
    yield sock
    sock.close()


def send_from_on_request(oversipd_daemon, far_end: socket.socket, user: str):
    """A daemon whose script sends a MESSAGE to `far_end` on the OPTIONS the test sends it."""
    server = uac_daemon(oversipd_daemon)
    client = UdpClient(server)
    target = f"sip:{user}@127.0.0.1:{far_end.getsockname()[1]}"
    client.send(request_bytes("OPTIONS", port=server.port, via_port=client.port, extra=f"X-Send-To: {target}"))
    assert client.response().status == 200
    return server, target


def test_a_uac_request_has_what_a_uac_must_fill_in(oversipd_daemon, far_end):
    server, target = send_from_on_request(oversipd_daemon, far_end, "alice")
    data, sender = far_end.recvfrom(65535)
    head = data.decode()
    assert head.startswith(f"MESSAGE {target} SIP/2.0\r\n")
    assert sender == ("127.0.0.1", server.port)                       # from the listener's own socket
    lines = dict(line.split(": ", 1) for line in head.split("\r\n\r\n")[0].split("\r\n")[1:])
    assert lines["Via"].startswith(f"SIP/2.0/UDP 127.0.0.1:{server.port};branch=z9hG4bK")
    assert lines["From"].startswith("<sip:bot@example.com>;tag=") and lines["To"] == f"<{target}>"
    assert lines["CSeq"] == "1 MESSAGE" and lines["Max-Forwards"] == "70" and lines["Call-ID"]
    assert lines["Content-Type"] == "text/plain" and lines["Content-Length"] == "2"
    assert "Record-Route" not in lines
    assert data.endswith(b"\r\n\r\nhi")


def test_a_uac_request_to_nobody_ends_in_408_after_timer_f_with_retransmissions(oversipd_daemon, far_end):
    server, _ = send_from_on_request(oversipd_daemon, far_end, "nobody")
    [outcome] = server.daemon.wait_events("outcome", timeout=10)
    assert outcome["value"] == [408, "Request Timeout"]
    [error] = server.daemon.find("error")
    assert (error["status"], error["reason"]) == (408, "Request Timeout")
    first, again = far_end.recv(65535), far_end.recv(65535)   # Timer E: sent again over UDP
    assert first == again and first.startswith(b"MESSAGE ")

EDITING_PROXY_SCRIPT = """
from oversipd import SipEvents
from oversipd.sip import Proxy

def edit(response):   # as an OverSIP script writes it
    if response.status_code == 200 and response.header("X-Uas") == "sipp":
        response.reason_phrase = "Fine"
        response.set_header("X-Proxy", "seen " + response.body.decode().strip())
        response.delete_header("X-Uas")

@SipEvents.on_request
def on_request(request):
    proxy = Proxy("proxy_out")
    proxy.on_success_response(edit)
    proxy.route(request)
"""


def test_a_proxy_callback_edits_the_response_by_oversips_names(oversipd_daemon):
    uas = Callee("message_uas.xml", calls=1)
    try:
        server = sip_daemon(oversipd_daemon, script=EDITING_PROXY_SCRIPT, extra_tables={"proxy.proxy_out": PROFILE})
        client = UdpClient(server)
        client.send(request_bytes("MESSAGE", port=uas.port, via_port=client.port, body=b"hi"))
        response = client.response()
        assert (response.status_code, response.reason_phrase) == (200, "Fine")
        assert response.header("X-Proxy") == "seen pong" and response.header("X-Uas") is None
        assert response.body.startswith(b"pong")
        assert uas.finish()[0] == 0
    finally:
        uas.stop()


def test_what_a_uac_cannot_send_raises_in_the_caller(oversipd_daemon):
    server = uac_daemon(oversipd_daemon)
    client = UdpClient(server)
    client.request("OPTIONS", extra="X-Misuse: yes")
    assert client.response().status == 200
    errors = [event["error"] for event in server.daemon.wait_events("misuse", count=2)]
    assert "does not send ACK" in errors[0] and "no CR or LF" in errors[1]
