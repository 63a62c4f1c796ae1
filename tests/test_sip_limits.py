"""SIP.md §15: admission control — [limits], 503 with Retry-After, bounded tables, the auth hook."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from oversipd.errors import EXIT_USAGE
from oversipd.sip.counters import read_counters
from oversipd.sip.settings import LimitSettings
from oversipd.sip.syntax.message import parse_message
from oversipd.sip.transport.listeners import stream_queue_age

from conftest import module
from sip_helpers import StreamReader, UdpClient, counters, request_bytes, sip_daemon, wait_counter

# INVITEs stay pending (a transaction each) until CANCELed; "fail" counts a failed
# authentication through the hook; everything else gets 200.
SCRIPT = module('''
from oversipd import SipEvents
from oversipd.sip.core.limits import auth_blocked, note_auth_failure

@SipEvents.on_request
def on_request(request):
    record("request", method=request.sip_method, call_id=request.call_id)
    if request.sip_method == "ACK":
        return
    if request.sip_method == "INVITE":
        request.reply(180)
        return asyncio.Event().wait()   # pending until a CANCEL ends it with 487
    if request.ruri.user == "fail":
        note_auth_failure(request)
        request.reply(401)
        return
    request.reply(200, headers=[("X-Blocked", str(auth_blocked(request)))])
''')


def limited(oversipd_daemon, tmp_path: Path, **limits: int):
    pid_file = tmp_path / "o.pid"
    server = sip_daemon(oversipd_daemon, script=SCRIPT, core={"pid_file": str(pid_file)},
                        extra_tables={"limits": limits})
    return server, pid_file


def tcp_request(conn: socket.socket, reader: StreamReader, port: int, method: str, **fields) -> bytes:
    data = request_bytes(method, port=port, transport="TCP", via_port=conn.getsockname()[1], **fields)
    conn.sendall(data)
    return data


def cancel_of(invite: bytes) -> bytes:
    return invite.replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"1 INVITE", b"1 CANCEL")


def ack_of(invite: bytes, to_tag: str) -> bytes:
    ack = invite.replace(b"INVITE sip", b"ACK sip", 1).replace(b"1 INVITE", b"1 ACK")
    head, _, rest = ack.partition(b"\r\nTo: ")
    to_line, _, tail = rest.partition(b"\r\n")
    return head + b"\r\nTo: " + to_line + f";tag={to_tag}".encode() + b"\r\n" + tail


def test_beyond_max_transactions_503_with_retry_after_then_normal_service(oversipd_daemon, tmp_path):
    server, pid_file = limited(oversipd_daemon, tmp_path, max_transactions=3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        reader = StreamReader(conn)
        invites = [tcp_request(conn, reader, server.port, "INVITE", call_id=f"held-{n}") for n in range(3)]
        assert [parse_message(reader.message()).status for _ in invites] == [180] * 3
        # Full: a new request gets 503 + Retry-After, without a transaction or a handler call.
        tcp_request(conn, reader, server.port, "OPTIONS", call_id="refused")
        refused = parse_message(reader.message())
        assert (refused.status, refused.header("Retry-After")) == (503, "5")
        # Over UDP too; its ACK is absorbed, not taken for a new request.
        client = UdpClient(server)
        invite = client.request("INVITE", call_id="refused-udp")
        busy = client.response()
        assert (busy.status, busy.header("Retry-After")) == (503, "5")
        client.send(ack_of(invite, busy.to.tag))
        # A retransmission and a CANCEL are still matched: the pending INVITEs end with 487.
        conn.sendall(invites[0])
        assert parse_message(reader.message()).status == 180
        for invite in invites:
            conn.sendall(cancel_of(invite))
        finals = sorted((r.status, r.cseq_method) for r in (parse_message(reader.message()) for _ in range(6)))
        assert finals == [(200, "CANCEL")] * 3 + [(487, "INVITE")] * 3
        for invite in invites:   # over TCP the ACK ends each INVITE transaction at once
            conn.sendall(ack_of(invite, "x").replace(b";tag=x", b""))
        wait_counter(pid_file, "retransmitted", 5)   # the 3 ACKs, the UDP 503's ACK, the retransmission
        tcp_request(conn, reader, server.port, "OPTIONS", call_id="served")
        assert parse_message(reader.message()).status == 200
    assert counters(pid_file, "busy_503") == 2
    server.daemon.wait_events("request", call_id="served")
    handled = {e["call_id"] for e in server.daemon.find("request")}
    assert "refused" not in handled and "refused-udp" not in handled


def test_per_source_rate_503_then_silence(oversipd_daemon, tmp_path):
    server, pid_file = limited(oversipd_daemon, tmp_path, per_source_rate=5)
    client = UdpClient(server)
    for n in range(40):
        client.request("OPTIONS", call_id=f"flood-{n}")
    deadline = time.monotonic() + 15
    while True:   # every request counted once it was answered, refused or dropped (shared memory: no event)
        ok, throttled, dropped = (counters(pid_file, name) for name in ("2xx", "rate_503", "rate_drop"))
        if ok + throttled + dropped >= 40 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert ok + throttled + dropped == 40
    # 5 requests/s with a burst of 5, and as many 503s; the rest in silence (more if the sending was slow).
    assert 5 <= ok <= 10 and 5 <= throttled <= 10 and dropped >= 20
    statuses = [client.response() for _ in range(ok + throttled)]
    assert {r.header("Retry-After") for r in statuses if r.status == 503} == {"1"}
    other = UdpClient(server)
    other.sock.close()
    other.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.sock.bind(("127.0.0.2", 0))
    other.port = other.sock.getsockname()[1]
    other.request("OPTIONS", call_id="another-source")
    assert other.response().status == 200   # the limit is per source IP


def test_auth_failures_block_a_source_with_403_for_a_minute(oversipd_daemon, tmp_path):
    server, pid_file = limited(oversipd_daemon, tmp_path, auth_failures=3)
    client = UdpClient(server)
    client.request("OPTIONS")
    assert client.response().header("X-Blocked") == "False"
    for _ in range(3):
        client.request("MESSAGE", user="fail")
        assert client.response().status == 401
    client.request("OPTIONS", call_id="blocked")
    assert client.response().status == 403
    assert counters(pid_file, "auth_403") >= 1
    client.request("MESSAGE", user="fail", call_id="last")   # blocked too: the script never sees it
    assert client.response().status == 403
    server.daemon.wait_events("request", count=4)
    assert not {"blocked", "last"} & {e["call_id"] for e in server.daemon.find("request")}


def blocked_within(client: UdpClient, seconds: float) -> bool:
    """Whether `client`'s OPTIONS get 403 within `seconds`: another worker's failures arrive over the relay."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.request("OPTIONS")
        if client.response().status == 403:
            return True
    return False


def test_auth_failures_from_one_ip_are_counted_across_the_workers(oversipd_daemon, tmp_path):
    """Each failure is told to every worker: an IP's ports spread over the slots, its tries do not."""
    pid_file = tmp_path / "o.pid"
    server = sip_daemon(oversipd_daemon, script=SCRIPT, workers=2, core={"pid_file": str(pid_file)},
                        extra_tables={"limits": {"auth_failures": 3}})
    for _ in range(3):   # from three ports: the kernel's hash sends them to either slot
        client = UdpClient(server)
        client.request("MESSAGE", user="fail")
        assert client.response().status == 401
        client.close()
    clients = [UdpClient(server) for _ in range(16)]   # all 16 on one slot: about once in 30 000 runs
    try:
        assert all(blocked_within(client, 5.0) for client in clients)
    finally:
        for client in clients:
            client.close()
    refused = {slot: row["auth_403"] for slot, row in read_counters(pid_file).items()}
    assert all(refused.get(slot) for slot in (1, 2)), refused   # both workers blocked the IP


def test_beyond_max_connections_new_connections_are_closed(oversipd_daemon, tmp_path):
    server, pid_file = limited(oversipd_daemon, tmp_path, max_connections=2)
    first, second = (socket.create_connection(("127.0.0.1", server.port), timeout=15) for _ in range(2))
    for conn in (first, second):   # both accepted and served
        tcp_request(conn, None, server.port, "OPTIONS")
        assert parse_message(StreamReader(conn).message()).status == 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as third:
        try:
            assert third.recv(100) == b""   # closed at once
        except ConnectionResetError:
            pass
    assert counters(pid_file, "conn_refused") == 1
    first.close()
    wait_free = time.monotonic() + 15
    while True:   # the worker sees the close and frees its place
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as again:
            again.sendall(request_bytes("OPTIONS", port=server.port, transport="TCP"))
            try:
                assert parse_message(StreamReader(again).message()).status == 200
                break
            except (EOFError, ConnectionResetError):
                assert time.monotonic() < wait_free, "the closed connection's place was never freed"
    second.close()


@pytest.mark.parametrize("table, key, problem", [
    ({"max_transactions": 0}, "limits.max_transactions", "expected an integer >= 1"),
    ({"per_source_rate": -1}, "limits.per_source_rate", "expected an integer >= 0"),
    ({"auth_failures": "10"}, "limits.auth_failures", "expected an integer >= 0"),
    ({"max_conections": 5}, "limits.max_conections", "unknown key"),
])
def test_a_bad_limit_exits_2_naming_file_and_key(oversipd_daemon, table, key, problem):
    daemon = sip_daemon(oversipd_daemon, start=False, extra_tables={"limits": table}).daemon
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.startswith(f"oversipd: {daemon.conf_path}: {key}: ") and problem in result.stderr


def test_limit_defaults_are_sip_md_s():
    assert LimitSettings() == LimitSettings(max_transactions=100000, max_connections=10000,
                                            per_source_rate=0, auth_failures=10)


def busy_script(seconds: float) -> str:
    """A server script whose every request costs the reactor `seconds` of CPU before its 200."""
    return module(f'''
from oversipd import SipEvents

@SipEvents.on_request
def on_request(request):
    end = time.perf_counter() + {seconds}
    while time.perf_counter() < end:
        pass
    request.reply(200)
''')


# Each request costs the reactor 5 ms: 200 sent at once queue up in the socket.
SLOW_SCRIPT = busy_script(0.005)


def test_a_standing_receive_queue_is_shed_with_503_not_dropped(oversipd_daemon, tmp_path):
    pid_file = tmp_path / "o.pid"
    server = sip_daemon(oversipd_daemon, script=SLOW_SCRIPT, core={"pid_file": str(pid_file)})
    client = UdpClient(server)
    for n in range(200):
        client.request("OPTIONS", call_id=f"burst-{n}")
    statuses = [client.response().status for _ in range(200)]   # every request is answered
    # The first batch of reads is served (64 x 5 ms); what waits in the queue is then
    # older than SHED_SOJOURN (100 ms), so the rest is refused.
    assert 64 <= statuses.count(200) < 200 and statuses.count(503) == 200 - statuses.count(200)
    assert counters(pid_file, "busy_503") == statuses.count(503)
    # Served again once the queue is empty.  A request sent on the last response may
    # still be read with the burst (the queue had not been found empty yet): its 503
    # is then the burst's last, and the worker's next read finds the queue empty.
    client.request("OPTIONS", call_id="after")
    status = client.response().status
    if status == 503:
        client.request("OPTIONS", call_id="after-again")
        status = client.response().status
    assert status == 200


# Each request costs the reactor 1 ms.
BUSY_SCRIPT = busy_script(0.001)


def tcp_request_bytes(conn: socket.socket, port: int, call_id: str) -> bytes:
    return request_bytes("OPTIONS", port=port, transport="TCP", via_port=conn.getsockname()[1], call_id=call_id)


def test_a_connections_standing_backlog_is_shed_with_503(oversipd_daemon, tmp_path):
    """2 000 requests of 1 ms each in one burst over one connection: TCP has no arrival stamps; the
    worker sees from its reads' pace that what waits is older than SHED_SOJOURN, and sheds it."""
    pid_file = tmp_path / "o.pid"
    server = sip_daemon(oversipd_daemon, script=BUSY_SCRIPT, core={"pid_file": str(pid_file)})
    with socket.create_connection((server.host, server.port)) as conn:
        burst = b"".join(tcp_request_bytes(conn, server.port, f"burst-{n}") for n in range(2000))
        # Sent while the responses are read: neither side's buffers fill and stop the other.
        sender = threading.Thread(target=conn.sendall, args=(burst,))
        sender.start()
        reader = StreamReader(conn)
        statuses = [int(reader.message().split(b" ", 2)[1]) for _ in range(2000)]   # every one answered
        sender.join()
        assert 0 < statuses.count(200) < 2000 and statuses.count(503) == 2000 - statuses.count(200)
        assert counters(pid_file, "busy_503") == statuses.count(503)
        # Caught up: served again, while the burst's connection stays open and silent.
        with socket.create_connection((server.host, server.port)) as other:
            other.sendall(tcp_request_bytes(other, server.port, "after"))
            assert StreamReader(other).message().startswith(b"SIP/2.0 200")


def test_a_streams_queue_age_is_estimated_from_the_pace_of_its_reads():
    # The previous read left nothing in the kernel: caught up, whatever came since.
    assert stream_queue_age(65536, 10000, None, 0, 5.0) is None
    # 64 KiB took 0.2 s; 64 KiB read now and 192 KiB still queued take 0.8 s more.
    assert stream_queue_age(65536, 196608, 1.0, 65536, 1.2) == pytest.approx(0.8)
    # A steady stream read in small pieces: each waited about one read's time.
    assert stream_queue_age(1000, 20, 1.0, 1000, 1.001) == pytest.approx(0.00102)
