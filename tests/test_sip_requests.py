"""SIP.md §9 and §11: SipEvents.on_request, the request API, and what bad input gets."""

from __future__ import annotations

import socket

import pytest

from oversipd.sip.syntax.message import parse_message

from conftest import module
from sip_helpers import UdpClient, read_stream_message, request_bytes, sip_daemon

# Reports what the request object shows, then acts as the request's headers say.
API_SCRIPT = module('''
from oversipd import SipEvents

@SipEvents.on_request
def on_request(request):
    if request.sip_method == "ACK":
        record("ack", call_id=request.call_id)
        return
    action = request.header("X-Action") or "reply"
    if action == "describe":
        request.cvars["seen"] = True
        record("request", method=request.sip_method, ruri=str(request.ruri), scheme=request.ruri.scheme,
               ruri_user=request.ruri.user, ruri_port=request.ruri.port,
               from_tag=request.from_.tag, from_uri=str(request.from_.uri), to_tag=request.to.tag,
               call_id=request.call_id, cseq=request.cseq, via_count=len(request.via),
               max_forwards=request.max_forwards, body=request.body.decode(),
               transport=request.transport, source_ip=request.source_ip, source_port=request.source_port,
               in_dialog=request.in_dialog, myself=request.destination_myself(),
               custom=request.headers("supported"), compact=request.header("i"), cvars=request.cvars)
        request.reply(200, headers=[("X-Answer", "42")], body=b"hello")
    elif action == "twice":
        request.reply(180)
        request.reply(200)
        try:
            request.reply(202)
        except RuntimeError as error:
            record("second", error=str(error))
    elif action == "raise":
        raise ValueError("handler bug")
    elif action == "exit":
        sys.exit(3)
    elif action == "silent":
        pass
    elif action == "async":
        async def later():
            await asyncio.sleep(0.01)
            request.reply(202, "Later")
        return later()
    elif action == "async-raise":
        async def later():
            await asyncio.sleep(0)
            raise KeyError("async bug")
        return later()
    elif action == "fix-nat":
        request.fix_nat()
        request.reply(200)
    elif action == "max-forwards":
        if request.check_max_forwards(5):
            request.reply(200, headers=[("X-MF", request.header("Max-Forwards"))])
    elif action == "pending":
        record("pending", call_id=request.call_id)   # an INVITE left unanswered, for CANCEL
        request.reply(180)
        async def never():
            await asyncio.sleep(30)
        return never()
    else:
        record("request", method=request.sip_method, call_id=request.call_id)
        request.reply(200)
''')


@pytest.fixture
def server(oversipd_daemon):
    return sip_daemon(oversipd_daemon, script=API_SCRIPT)


def test_the_request_api(server):
    client = UdpClient(server)
    client.request("MESSAGE", extra="X-Action: describe\r\nSupported: a, b\r\nk: c",
                   body=b"body!", user="bob", call_id="call-api")
    response = client.response()
    assert response.status == 200 and response.header("X-Answer") == "42" and response.body == b"hello"
    assert response.to.tag   # a To tag on a final response
    seen = server.daemon.wait_events("request")[0]
    assert seen | {"pid": 0, "t": 0, "worker": 0, "role": ""} == {
        "event": "request", "pid": 0, "t": 0, "worker": 0, "role": "",
        "method": "MESSAGE", "ruri": f"sip:bob@127.0.0.1:{server.port}", "scheme": "sip", "ruri_user": "bob",
        "ruri_port": server.port, "from_tag": "a1", "from_uri": "sip:alice@example.com", "to_tag": None,
        "call_id": "call-api", "cseq": 1, "via_count": 1, "max_forwards": 70, "body": "body!",
        "transport": "udp", "source_ip": "127.0.0.1", "source_port": client.port, "in_dialog": False,
        "myself": True, "custom": ["a", "b", "c"], "compact": "call-api", "cvars": {"seen": True}}


def test_a_second_final_reply_raises_and_100_has_no_to_tag(server):
    client = UdpClient(server)
    client.request("INVITE", extra="X-Action: twice")
    ringing, ok = client.response(), client.response()
    assert (ringing.status, ok.status) == (180, 200)
    assert ringing.to.tag and ringing.to.tag == ok.to.tag
    assert "already sent" in server.daemon.wait_events("second")[0]["error"]


def test_a_handler_that_raises_gets_500_and_a_traceback(server):
    client = UdpClient(server)
    client.request("OPTIONS", extra="X-Action: raise")
    assert client.response().status == 500
    server.daemon.wait_log("ValueError")
    assert any("ERROR" in line and "on_request raised" in line for line in server.daemon.log_lines())
    client.request("OPTIONS", extra="X-Action: async-raise")
    assert client.response().status == 500
    server.daemon.wait_log("KeyError")
    workers = server.daemon.worker_pids()
    client.request("OPTIONS", extra="X-Action: exit")     # sys.exit in a handler ends nothing
    assert client.response().status == 500
    client.request("OPTIONS")
    assert client.response().status == 200
    assert server.daemon.worker_pids() == workers


def test_a_handler_that_does_not_reply_gets_500_and_a_warning(server):
    client = UdpClient(server)
    client.request("OPTIONS", extra="X-Action: silent")
    assert client.response().status == 500
    server.daemon.wait_log("returned without replying")


def test_an_async_handler_replies_later(server):
    client = UdpClient(server)
    client.request("OPTIONS", extra="X-Action: async")
    response = client.response()
    assert (response.status, response.reason) == (202, "Later")


def test_check_max_forwards(server):
    client = UdpClient(server)
    client.request("OPTIONS", extra="X-Action: max-forwards", max_forwards=69)
    assert client.response().header("X-MF") == "5"        # lowered to the limit
    client.request("OPTIONS", extra="X-Action: max-forwards", max_forwards=None)
    assert client.response().header("X-MF") == "5"        # 70 added, then lowered
    client.request("OPTIONS", extra="X-Action: max-forwards", max_forwards=0)
    assert client.response().status == 483


def test_without_a_handler_every_request_gets_500_and_one_warning(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, script="")
    client = UdpClient(server)
    for _ in range(3):
        client.request("OPTIONS")
        assert client.response().status == 500
    assert len(server.daemon.log_lines("no SipEvents.on_request handler")) == 1


@pytest.mark.parametrize("extra, status, reason_part", [
    ("Proxy-Require: foo, bar", 420, None),
    ("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKosd-loop", None, None),
])
def test_what_the_core_refuses_by_itself(server, extra, status, reason_part):
    client = UdpClient(server)
    client.request("OPTIONS", extra=extra)
    response = client.response()
    if status == 420:
        assert response.status == 420 and response.headers("Unsupported") == ["foo", "bar"]
    else:
        assert response.status == 200   # another proxy's Via: no loop
    client.request("INVITE", max_forwards=0)
    assert client.response().status == 483


def test_our_own_via_coming_back_is_a_loop(server):
    client = UdpClient(server)
    client.request("OPTIONS", extra=f"Via: SIP/2.0/UDP 127.0.0.1:{server.port};branch=z9hG4bKosd-1")
    assert client.response().status == 482


def test_a_bad_part_gets_400_naming_it(server):
    client = UdpClient(server)
    client.request("OPTIONS", extra="Max-Forwards: lots")
    response = client.response()
    assert response.status == 400 and "Max-Forwards" in response.reason
    client.send(b"\x00\xffnot sip at all\r\n\r\n")   # dropped
    client.request("OPTIONS")
    assert client.response().status == 200


def test_a_retransmission_gets_the_same_response_and_no_second_handler_call(server):
    client = UdpClient(server)
    data = client.request("OPTIONS", call_id="retrans")
    first = client.response()
    client.send(data)
    again = client.response()
    assert first.to_bytes() == again.to_bytes()
    assert len(server.daemon.wait_events("request")) == 1


def test_cancel_ends_a_pending_invite_with_487(server):
    client = UdpClient(server)
    invite = client.request("INVITE", extra="X-Action: pending", branch="z9hG4bKcancel1", call_id="c1")
    server.daemon.wait_events("pending")
    assert client.response().status == 180
    client.send(invite.replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
                .replace(b"X-Action: pending\r\n", b""))
    statuses = sorted((r.status, r.cseq_method) for r in (client.response(), client.response()))
    assert statuses == [(200, "CANCEL"), (487, "INVITE")]
    client.request("CANCEL", call_id="nothing")
    assert client.response().status == 481


def test_tcp_requests_reach_the_handler(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        conn.sendall(request_bytes("OPTIONS", port=server.port, transport="TCP",
                                   extra="X-Action: describe"))
        response = parse_message(read_stream_message(conn))
    assert response.status == 200
    assert server.daemon.wait_events("request")[0]["transport"] == "tcp"


def test_fix_nat_sends_the_response_where_the_request_came_from(server):
    client = UdpClient(server)
    # The Via names an address behind a NAT: without fix_nat the answer would go to its port 5080.
    data = request_bytes("OPTIONS", port=server.port, via_port=5080, extra="X-Action: fix-nat")
    client.send(data.replace(b"Via: SIP/2.0/UDP 127.0.0.1:5080;", b"Via: SIP/2.0/UDP 10.0.0.9:5080;")
                .replace(b";rport", b""))
    via = client.response().via[0]
    assert (via.host, via.port, via.received, via.rport) == ("10.0.0.9", 5080, "127.0.0.1", str(client.port))


def test_an_invite_final_response_is_retransmitted_over_udp_until_its_ack(oversipd_daemon):
    server = sip_daemon(oversipd_daemon)   # the recording script: INVITE -> 486
    client = UdpClient(server)
    invite = client.request("INVITE", branch="z9hG4bKtimerg", call_id="timer-g")
    first = client.response()
    again = client.response()            # Timer G: the same 486, T1 (0.5 s) later
    assert first.status == 486 and again.to_bytes() == first.to_bytes()
    ack = invite.replace(b"INVITE sip:", b"ACK sip:", 1).replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")
    ack = ack.replace(f"To: <sip:127.0.0.1:{server.port}>".encode(),
                      f"To: <sip:127.0.0.1:{server.port}>;tag={first.to.tag}".encode())
    client.send(ack)
    # The next Timer G would fire 1 s after the first retransmission: none may come.
    with pytest.raises(TimeoutError):
        client.response(timeout=2.0)
    assert [e["method"] for e in server.daemon.find("request")] == ["INVITE"]   # the ACK was absorbed
