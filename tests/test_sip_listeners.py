"""SIP.md §8: SIP over UDP and TCP (IPv4 and IPv6) in every worker, with sipp as a real client."""

from __future__ import annotations

import socket

import pytest

from oversipd.sip.syntax.message import Response, parse_message

from db_helpers import wait_until
from sip_helpers import StreamReader, UdpClient, read_stream_message, request_bytes, run_sipp, sip_daemon, sipp_counts


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_are_answered_200(oversipd_daemon, tmp_path, transport):
    server = sip_daemon(oversipd_daemon, workers=2)
    result = run_sipp(server, "options.xml", calls=50, rate=50, transport=transport, directory=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert sipp_counts(result) == (50, 0)
    requests = server.daemon.wait_events("request", count=50)
    assert {r["transport"] for r in requests} == {"udp" if transport == "u1" else "tcp"}


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_invite_gets_486_and_its_ack_is_absorbed(oversipd_daemon, tmp_path, transport):
    server = sip_daemon(oversipd_daemon, workers=2)
    result = run_sipp(server, "invite_486.xml", calls=20, rate=20, transport=transport, directory=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert sipp_counts(result) == (20, 0)
    server.daemon.wait_events("request", count=20)
    assert [r["method"] for r in server.daemon.find("request")] == ["INVITE"] * 20  # no ACK reached the script


def test_ipv6_udp_and_tcp(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, host="::1", workers=2)
    client = UdpClient(server)
    client.request("OPTIONS")
    assert client.response().status == 200
    with socket.create_connection(("::1", server.port), timeout=15) as conn:
        conn.sendall(request_bytes("OPTIONS", host="::1", port=server.port, transport="TCP"))
        response = parse_message(read_stream_message(conn))
    assert isinstance(response, Response) and response.status == 200


def test_a_stream_without_content_length_gets_400_and_is_closed(oversipd_daemon):
    server = sip_daemon(oversipd_daemon)
    request = request_bytes("OPTIONS", port=server.port, transport="TCP").replace(b"Content-Length: 0\r\n", b"")
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65535):
            data += chunk
    assert parse_message(data).status == 400
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        conn.sendall(b"\x16\x03\x01 not SIP at all\r\n")   # garbage: closed without a word
        assert conn.recv(100) == b""


def test_tcp_frames_by_content_length_and_answers_keepalives(oversipd_daemon):
    server = sip_daemon(oversipd_daemon)
    first = request_bytes("OPTIONS", port=server.port, transport="TCP", body=b"v=0\r\n",
                          extra="Content-Type: application/sdp")
    second = request_bytes("REGISTER", port=server.port, transport="TCP")
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        stream = first + b"\r\n\r\n" + second   # a double-CRLF ping between two messages
        conn.sendall(stream[:37])
        conn.sendall(stream[37:])
        reader = StreamReader(conn)
        first_answer = parse_message(reader.message())
        pongs_before_second = reader.pongs
        second_answer = parse_message(reader.message())
    # Answered in stream order, with the single-CRLF pong between the two responses.
    assert (first_answer.status, second_answer.status) == (200, 404)
    assert (pongs_before_second, reader.pongs) == (0, 1)


def test_a_tcp_message_over_max_message_size_closes_the_connection(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, sip={"max_message_size": 2000})
    big = request_bytes("MESSAGE", port=server.port, transport="TCP", body=b"x" * 3000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        conn.sendall(big)
        data = b""
        while chunk := conn.recv(65535):   # EOF: the worker closed it
            data += chunk
    response = parse_message(data)
    assert (response.status, response.cseq_method) == (513, "MESSAGE")
    client = UdpClient(server)
    client.request("MESSAGE", body=b"x" * 3000)           # over UDP: dropped
    client.request("OPTIONS")
    assert client.response().status == 200                # the next one is answered
    assert [r["method"] for r in server.daemon.wait_events("request")] == ["OPTIONS"]


def test_a_silent_tcp_connection_is_closed_after_tcp_idle_timeout(oversipd_daemon):
    server = sip_daemon(oversipd_daemon, sip={"tcp_idle_timeout": 0.5})
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        assert conn.recv(100) == b""   # EOF, well before the client's own timeout


def test_udp_keepalives_are_ignored(oversipd_daemon):
    server = sip_daemon(oversipd_daemon)
    client = UdpClient(server)
    client.send(b"\r\n\r\n")
    client.request("OPTIONS")
    assert client.response().status == 200   # the first datagram back answers the OPTIONS


def test_status_shows_the_sip_counters(oversipd_daemon, tmp_path):
    server = sip_daemon(oversipd_daemon, core={"pid_file": str(tmp_path / "o.pid")})
    client = UdpClient(server)
    client.request("OPTIONS")
    assert client.response().status == 200
    client.request("INVITE", branch="z9hG4bKstatus", call_id="status")
    rejected = client.response()
    assert rejected.status == 486
    # Acknowledged, as a UAC does: else the 486 is retransmitted (Timer G) while the test reads status.
    client.request("ACK", branch="z9hG4bKstatus", call_id="status", to_tag=rejected.to.tag)
    client.send(b"garbage\r\n\r\n")
    client.request("OPTIONS")
    client.response()
    status = server.daemon.run_command("status", "--pid-file", str(tmp_path / "o.pid"))
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith("sip:"))
    assert "received 5, sent 3, dropped 1" in line and "2xx 2" in line and "4xx 1" in line
    assert (tmp_path / "o.pid.sip").exists()
    assert server.daemon.stop() == 0
    assert not (tmp_path / "o.pid.sip").exists()   # the master removes the counters file it made


def test_status_shows_the_transactions_each_worker_holds_now(oversipd_daemon, tmp_path):
    """server_tx and client_tx are gauges: an OPTIONS over UDP is held 32 s (Timer J), an ACKed INVITE over TCP not."""
    from sip_helpers import counters
    pid_file = tmp_path / "o.pid"
    server = sip_daemon(oversipd_daemon, core={"pid_file": str(pid_file)})
    with socket.create_connection((server.host, server.port)) as tcp:
        via_port = tcp.getsockname()[1]
        tcp.sendall(request_bytes("INVITE", port=server.port, via_port=via_port, transport="TCP",
                                  branch="z9hG4bKgauge", call_id="gauge"))
        rejected = parse_message(read_stream_message(tcp))
        assert rejected.status == 486
        tcp.sendall(request_bytes("ACK", port=server.port, via_port=via_port, transport="TCP", branch="z9hG4bKgauge",
                                  call_id="gauge", to_tag=rejected.to.tag))
        client = UdpClient(server)
        for _ in range(2):
            client.request("OPTIONS")
            assert client.response().status == 200
        # Written twice a second: polled (shared memory sends no event).
        wait_until(lambda: counters(pid_file, "server_tx") == 2, "2 server transactions, the UDP OPTIONS")
    assert counters(pid_file, "client_tx") == 0
    status = server.daemon.run_command("status", "--pid-file", str(pid_file)).stdout
    line = next(line for line in status.splitlines() if line.startswith("sip:"))
    assert "server_tx 2, client_tx 0" in line
    assert server.daemon.stop() == 0


def test_without_a_sip_table_there_is_no_sip(oversipd_daemon, tmp_path):
    from listen_helpers import SERVING_SCRIPT, free_port, listen_table
    daemon = oversipd_daemon(server_script=SERVING_SCRIPT, core={"pid_file": str(tmp_path / "o.pid")},
                             extra_tables={"listen.udp": listen_table(f"udp://127.0.0.1:{free_port('udp')}")})
    status = daemon.run_command("status", "--pid-file", str(tmp_path / "o.pid"))
    assert status.returncode == 0 and "sip:" not in status.stdout
    assert not (tmp_path / "o.pid.sip").exists()


def test_a_wildcard_listener_takes_every_address_of_the_machine_as_ours(oversipd_daemon):
    from listen_helpers import free_port, listen_table
    from sip_helpers import RECORDING_SCRIPT, SipServer

    port = free_port("udp")
    daemon = oversipd_daemon(server_script=RECORDING_SCRIPT, extra_tables={
        "listen.sip_udp": listen_table(f"udp://0.0.0.0:{port}"), "sip": {"listen": ["sip_udp"]}})
    client = UdpClient(SipServer(daemon, port))
    client.request("OPTIONS")                    # sip:127.0.0.1:PORT: one of the machine's addresses
    assert client.response().status == 200
    client.send(request_bytes("OPTIONS", port=port, via_port=client.port).replace(
        f"sip:127.0.0.1:{port} SIP/2.0".encode(), f"sip:192.0.2.1:{port} SIP/2.0".encode(), 1))
    assert client.response().status == 404       # TEST-NET-1 is nobody's
