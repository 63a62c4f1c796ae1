"""SIP.md §13 — keep-alives (RFC 5626 §4.4): CRLF ping/pong on TCP, STUN Binding (RFC 5389) on UDP.

The STUN client is the test: it writes a Binding request by RFC 5389's
layout and decodes the XOR-MAPPED-ADDRESS of the answer itself.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oversipd.sip.transport import stun

from sip_helpers import UdpClient, sip_daemon

MAGIC_COOKIE = 0x2112A442
SOFTWARE = 0x8022


def binding_request(transaction_id: bytes, attributes: bytes = b"") -> bytes:
    return struct.pack(">HHI", 0x0001, len(attributes), MAGIC_COOKIE) + transaction_id + attributes


def software_attribute(text: bytes) -> bytes:
    padding = b"\x00" * (-len(text) % 4)
    return struct.pack(">HH", SOFTWARE, len(text)) + text + padding


def mapped_address(answer: bytes, transaction_id: bytes) -> tuple[str, int]:
    """The XOR-MAPPED-ADDRESS of a Binding success response, decoded by RFC 5389 §15.2."""
    kind, length, cookie = struct.unpack_from(">HHI", answer)
    assert (kind, cookie, answer[8:20]) == (0x0101, MAGIC_COOKIE, transaction_id)
    assert len(answer) == 20 + length
    offset = 20
    while offset < len(answer):
        attribute, size = struct.unpack_from(">HH", answer, offset)
        value = answer[offset + 4:offset + 4 + size]
        if attribute == 0x0020:
            family, xport = struct.unpack_from(">xBH", value)
            port = xport ^ (MAGIC_COOKIE >> 16)
            mask = MAGIC_COOKIE.to_bytes(4, "big") + transaction_id
            raw = bytes(a ^ b for a, b in zip(value[4:], mask))
            assert (family, len(raw)) in ((1, 4), (2, 16))
            return str(ipaddress.ip_address(raw)), port
        offset += 4 + (size + 3) // 4 * 4
    raise AssertionError(f"no XOR-MAPPED-ADDRESS in {answer!r}")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_stun_binding_request_gets_the_client_address_back(oversipd_daemon, host):
    server = sip_daemon(oversipd_daemon, host=host)
    client = UdpClient(server)
    transaction_id = os.urandom(12)
    client.send(binding_request(transaction_id, software_attribute(b"test client")))
    answer, _ = client.sock.recvfrom(2048)
    assert mapped_address(answer, transaction_id) == (host, client.port)
    client.request("OPTIONS")
    assert client.response().status == 200   # SIP on the same socket as before


def test_malformed_stun_is_dropped_counted_and_the_worker_lives_on(oversipd_daemon, tmp_path):
    pid_file = tmp_path / "o.pid"
    server = sip_daemon(oversipd_daemon, core={"pid_file": str(pid_file)})
    pids = server.daemon.worker_pids()
    client = UdpClient(server)
    transaction_id = os.urandom(12)
    malformed = [
        b"",                                                              # empty datagram
        b"\x00\x01\x00",                                                  # shorter than a header
        binding_request(transaction_id)[:-1],                             # cut
        struct.pack(">HHI", 0x0001, 8, MAGIC_COOKIE) + transaction_id + b"\x80\x22\x00\x10abcd",  # attribute overruns
        struct.pack(">HHI", 0x0001, 0, 0x01020304) + transaction_id,      # RFC 3489 (no magic cookie)
        struct.pack(">HHI", 0x0101, 0, MAGIC_COOKIE) + transaction_id,    # a response, not a request
        struct.pack(">HHI", 0x0001, 2, MAGIC_COOKIE) + transaction_id + b"\x00\x00",  # length not a multiple of 4
    ]
    for datagram in malformed:
        client.send(datagram)
    client.request("OPTIONS")
    assert client.response().status == 200   # the first datagram back answers the OPTIONS: nothing else was
    status = server.daemon.run_command("status", "--pid-file", str(pid_file))
    line = next(line for line in status.stdout.splitlines() if line.startswith("sip:"))
    assert f"received {len(malformed) + 1}, sent 1, dropped {len(malformed)}" in line
    assert server.daemon.worker_pids() == pids


def test_a_crlf_ping_on_tcp_gets_one_crlf_pong(oversipd_daemon):
    server = sip_daemon(oversipd_daemon)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        for _ in range(2):   # the connection stays open: each ping is answered
            conn.sendall(b"\r\n\r\n")
            assert conn.recv(100) == b"\r\n"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 63))
def test_the_stun_codec_answers_only_a_well_formed_binding_request(noise, cut):
    """Random bytes, and a Binding request cut or with random attributes: an answer or None, never a raise."""
    transaction_id = bytes(12)
    for data in (noise, binding_request(transaction_id, noise)[:20 + cut], binding_request(transaction_id, noise)):
        answer = stun.binding_response(data, ("192.0.2.7", 5060))
        if answer is not None:
            assert mapped_address(answer, data[8:20]) == ("192.0.2.7", 5060)


def test_an_ipv4_client_of_a_dual_stack_socket_gets_its_ipv4_address():
    transaction_id = os.urandom(12)
    answer = stun.binding_response(binding_request(transaction_id), ("::ffff:192.0.2.7", 5060, 0, 0))
    assert mapped_address(answer, transaction_id) == ("192.0.2.7", 5060)
