"""SIP.md §13 — Outbound: incoming_outbound_requested(), OverSIP's OutboundMangling and UserAssertion.

The clients are sockets of the test (UDP, and TCP connections they keep
open like a UA behind NAT); the registrar that knows no Outbound is sipp.
"""

from __future__ import annotations

import socket
import uuid

import pytest

from oversipd.sip.syntax.message import Request as Message, parse_message

from sip_helpers import SIPP, Callee, StreamReader, UdpClient, request_bytes, sip_daemon

OUTBOUND = "Contact: <sip:alice@192.0.2.1:5999;transport=tcp;ob>\r\nSupported: path, outbound"

CHECKING_SCRIPT = """
from oversipd import SipEvents
from oversipd.sip.user_assertion import add_pai, assert_connection, revoke_assertion
from oversipd.testing import record

@SipEvents.on_request
def on_request(request):
    case = request.header("X-Case")
    if request.sip_method == "ACK":
        return
    if case.startswith("ob-"):
        record("outbound", case=case, value=request.incoming_outbound_requested())
    elif request.sip_method == "REGISTER" and case.startswith("assert"):
        asserted = assert_connection(request)
        record("asserted", case=case, uri=None if asserted is None else str(asserted))
    elif case == "revoke":
        record("revoked", case=case, value=revoke_assertion(request))
    elif request.sip_method == "MESSAGE":
        added = add_pai(request)
        record("pai", case=case, added=added, pai=request.header("P-Asserted-Identity"))
    request.reply(200)
"""


def over_tcp(conn: socket.socket, reader: StreamReader, data: bytes) -> None:
    conn.sendall(data)
    assert parse_message(reader.message()).status == 200


def tcp_request(server, method: str, case: str, extra: str = "", **fields) -> bytes:
    return request_bytes(method, port=server.port, transport="TCP", extra=f"X-Case: {case}\r\n{extra}".strip(),
                         **fields)


def test_incoming_outbound_requested_over_tcp_and_udp(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, script=CHECKING_SCRIPT)
    tcp_cases = {
        "ob-register": (tcp_request(server, "REGISTER", "ob-register", OUTBOUND), True),
        "ob-invite": (tcp_request(server, "INVITE", "ob-invite", OUTBOUND), True),
        "ob-no-ob": (tcp_request(server, "REGISTER", "ob-no-ob", OUTBOUND.replace(";ob", "")), False),
        "ob-no-supported": (tcp_request(server, "REGISTER", "ob-no-supported",
                                     OUTBOUND.replace("Supported: path, outbound", "Supported: path")), False),
        "ob-in-dialog": (tcp_request(server, "INVITE", "ob-in-dialog", OUTBOUND, to_tag="b1"), False),
        "ob-message": (tcp_request(server, "MESSAGE", "ob-message", OUTBOUND), False),
        "ob-two-vias": (tcp_request(server, "REGISTER", "ob-two-vias",
                                 OUTBOUND + "\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKx"), False),
    }
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        reader = StreamReader(conn)
        for data, _ in tcp_cases.values():
            conn.sendall(data)
            message = parse_message(reader.message())
            if message.cseq_method == "INVITE" and message.status == 200:
                conn.sendall(tcp_request(server, "ACK", "ack", call_id=message.call_id, to_tag=message.to.tag,
                                         extra="ack-invite"))
    client = UdpClient(server)
    udp_cases = {"ob-udp-rport": True, "ob-udp-no-rport": False}
    for case in udp_cases:
        data = request_bytes("REGISTER", port=server.port, via_port=client.port, extra=f"X-Case: {case}\r\n{OUTBOUND}")
        client.send(data if case == "ob-udp-rport" else data.replace(b";rport", b""))
        assert client.response().status == 200
    expected = {case: value for case, (_, value) in tcp_cases.items()} | udp_cases
    seen = {event["case"]: event["value"] for event in server.daemon.wait_events("outbound", count=len(expected))}
    assert seen == expected


def test_add_pai_for_the_user_asserted_on_the_connection_only(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, script=CHECKING_SCRIPT)
    spoofed = "P-Asserted-Identity: <sip:boss@example.com>"
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        reader = StreamReader(conn)
        over_tcp(conn, reader, tcp_request(server, "MESSAGE", "before", spoofed))
        over_tcp(conn, reader, tcp_request(server, "REGISTER", "assert"))
        over_tcp(conn, reader, tcp_request(server, "MESSAGE", "asserted", spoofed))
        over_tcp(conn, reader, tcp_request(server, "MESSAGE", "preferred",
                                           spoofed + "\r\nP-Preferred-Identity: <sip:alias@example.com>"))
        other = tcp_request(server, "MESSAGE", "other-from").replace(b"<sip:alice@example.com>",
                                                                     b"<sip:mallory@example.com>")
        over_tcp(conn, reader, other)
        over_tcp(conn, reader, tcp_request(server, "OPTIONS", "revoke"))
        over_tcp(conn, reader, tcp_request(server, "MESSAGE", "revoked"))
    client = UdpClient(server)
    client.request("REGISTER", extra="X-Case: assert-udp")
    assert client.response().status == 200
    client.request("MESSAGE", extra=f"X-Case: udp\r\n{spoofed}")
    assert client.response().status == 200
    asserted = {e["case"]: e["uri"] for e in server.daemon.wait_events("asserted", count=2)}
    assert asserted == {"assert": "sip:alice@example.com", "assert-udp": None}
    pai = {e["case"]: (e["added"], e["pai"]) for e in server.daemon.wait_events("pai", count=6)}
    assert pai == {
        "before": (False, None),                                  # nobody asserted yet: a client's own PAI goes
        "asserted": (True, "<sip:alice@example.com>"),
        "preferred": (None, None),
        "other-from": (False, None),
        "revoked": (False, None),
        "udp": (False, None),
    }


MANGLING_SCRIPT = """
from oversipd import SipEvents
from oversipd.sip import Proxy
from oversipd.sip.outbound_mangling import add_outbound_to_contact, extract_outbound_from_ruri
from oversipd.sip.user_assertion import assert_connection
from oversipd.testing import record

def registered(response):   # as OverSIP's default script: the registrar's 2xx asserts the connection's user
    record("registered", contact=response.header("Contact"), asserted=str(assert_connection(response)))

@SipEvents.on_request
def on_request(request):
    if request.sip_method == "ACK":
        return
    proxy = Proxy("proxy_out")
    if request.sip_method == "REGISTER":
        add_outbound_to_contact(proxy)
        proxy.on_success_response(registered)
        proxy.route(request, REGISTRAR)
        return
    record("extracted", value=extract_outbound_from_ruri(request), ruri=str(request.ruri))
    proxy.route(request)
"""
PROFILE = {"use_dns": False, "transport_preference": ["udp"], "do_record_routing": True, "timer_F": 4}


@pytest.mark.skipif(SIPP is None, reason="sipp is missing: `make test` installs sip-tester")
@pytest.mark.parametrize("ob", [";ob", ""], ids=["outbound", "first-hop"])
def test_a_registrar_without_outbound_reaches_the_client_over_its_connection(oversipd_daemon, ob):
    registrar = Callee("registrar_no_outbound.xml", calls=1)
    try:
        script = f"REGISTRAR = 'sip:127.0.0.1:{registrar.port}'\n" + MANGLING_SCRIPT
        # Two workers: the registrar's MESSAGE may land on the one that does not hold the connection.
        server = sip_daemon(oversipd_daemon, script=script, workers=2, extra_tables={"proxy.proxy_out": PROFILE})
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
            reader = StreamReader(conn)
            conn.sendall(request_bytes("REGISTER", port=server.port, transport="TCP", call_id=uuid.uuid4().hex,
                                       user="alice", extra=OUTBOUND.replace(";ob", ob)))
            registered = parse_message(reader.message())
            assert registered.status == 200
            # The client finds its own Contact back, without the token the registrar stored.
            assert registered.header("Contact").startswith(f"<sip:alice@192.0.2.1:5999;transport=tcp{ob}>")
            incoming = parse_message(reader.message())   # the registrar's MESSAGE, over this connection
            assert isinstance(incoming, Message) and incoming.method == "MESSAGE"
            assert str(incoming.ruri) == f"sip:alice@192.0.2.1:5999;transport=tcp{ob}"
            conn.sendall(incoming.make_response(200, to_tag="alice1").to_bytes())
            status, output = registrar.finish()
            assert status == 0, output
        [event] = server.daemon.wait_events("extracted")
        assert (event["value"], event["ruri"]) == (True, f"sip:alice@192.0.2.1:5999;transport=tcp{ob}")
        [registered_event] = server.daemon.wait_events("registered")
        assert "ov-ob" not in registered_event["contact"]
        assert registered_event["asserted"] == "sip:alice@example.com"   # assert_connection(response)
    finally:
        registrar.stop()
