"""SIP.md §11: nothing a peer sends crashes a worker, leaks memory or file descriptors.

Random bytes and mutated real messages go into the UDP and TCP listeners;
the worker must keep its pid, its RSS and fd count must stay flat, and
every response it sends must parse.  The mutations come from a seeded
random.Random: a failure is reproducible from the seed in the test id.
"""

from __future__ import annotations

import os
import random
import socket
import time

import psutil
import pytest

from oversipd.sip.syntax.message import Response, parse_message

from sip_helpers import UdpClient, request_bytes, sip_daemon

ROUNDS = 3
PER_ROUND = 400
RSS_SLACK = 12 * 2**20   # Timer J keeps every answered UDP transaction for 32 s: some growth is expected


def mutations(rng: random.Random, port: int, via_port: int, transport: str, count: int) -> list[bytes]:
    """Random bytes, and real requests with their non-Via lines mutated (responses still come back to us)."""
    out = []
    for _ in range(count):
        if rng.random() < 0.2:
            out.append(rng.randbytes(rng.randrange(1, 600)))
            continue
        method = rng.choice(["OPTIONS", "INVITE", "REGISTER", "ACK", "CANCEL", "BYE", "MESSAGE"])
        real = request_bytes(method, port=port, via_port=via_port, transport=transport,
                             body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n" if rng.random() < 0.5 else b"")
        head, _, body = real.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        for _ in range(rng.randrange(1, 4)):
            index = rng.choice([i for i, line in enumerate(lines) if not line.startswith(b"Via:")])
            lines[index] = mutate(rng, lines[index])
        if rng.random() < 0.1:
            lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(lines))
        out.append(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    return out


def mutate(rng: random.Random, line: bytes) -> bytes:
    kind = rng.randrange(6)
    if kind == 0 and line:
        position = rng.randrange(len(line))
        return line[:position] + bytes([rng.randrange(256)]) + line[position + 1:]
    if kind == 1:
        return line[:rng.randrange(len(line) + 1)]
    if kind == 2:
        return line + rng.choice([b";", b"<", b">", b"\"", b":", b"@", b" ", b"\t", b"%", b"\x00", b"\xff", b","]) * rng.randrange(1, 5)
    if kind == 3:
        return line.replace(b":", b"", 1)
    if kind == 4:
        return line + b"9" * rng.randrange(1, 30)
    return rng.randbytes(rng.randrange(0, 80))


def worker_vitals(daemon) -> tuple[int, int, int]:
    (pid,) = daemon.worker_pids().values()
    process = psutil.Process(pid)
    return pid, process.memory_info().rss, process.num_fds()


def udp_round(client: UdpClient, payloads: list[bytes], sentinel: str) -> list[Response]:
    for payload in payloads:
        client.send(payload)
    client.request("OPTIONS", call_id=sentinel)
    responses = []
    while True:   # in order: one worker, one socket
        response = client.response()
        responses.append(response)
        if response.call_id == sentinel:
            return responses


def tcp_round(port: int, payloads: list[bytes]) -> None:
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(payload + request_bytes("OPTIONS", port=port, transport="TCP"))
            conn.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := conn.recv(65535):
                data += chunk
        for message in split_stream(data):
            assert isinstance(parse_message(message), Response), message


def split_stream(data: bytes) -> list[bytes]:
    messages = []
    data = data.lstrip(b"\r\n")
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        messages.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:].lstrip(b"\r\n")
    return messages


@pytest.mark.parametrize("seed", [1, 2])
def test_garbage_into_udp_and_tcp_leaves_the_worker_alive_and_flat(oversipd_daemon, seed):
    server = sip_daemon(oversipd_daemon, sip={"max_message_size": 4096})
    rng = random.Random(seed)
    client = UdpClient(server)
    client.request("OPTIONS", call_id="before")   # the worker is serving: its descriptors are all open
    assert client.response().status == 200
    before = worker_vitals(server.daemon)[2]
    vitals = []
    for round_number in range(ROUNDS):
        payloads = mutations(rng, server.port, client.port, "UDP", PER_ROUND)
        for response in udp_round(client, payloads, f"sentinel-{round_number}"):
            assert 100 <= response.status <= 699
        tcp_round(server.port, mutations(rng, server.port, client.port, "TCP", PER_ROUND // 10))
        # Every round waits for the TCP connections it closed (the first one did not: it could
        # count one the worker had not closed yet, and the later rounds one fewer).
        vitals.append(wait_for_settled_fds(server.daemon, before))
    pids = {pid for pid, _, _ in vitals}
    assert len(pids) == 1 and pids == set(server.daemon.worker_pids().values())
    assert vitals[-1][1] - vitals[0][1] < RSS_SLACK, vitals
    assert vitals[-1][2] == vitals[0][2], vitals
    assert "Traceback" not in server.daemon.log_text()


def wait_for_settled_fds(daemon, expected: int | None, timeout: float = 15.0) -> tuple[int, int, int]:
    """The worker's vitals once its closed TCP connections are gone (fd count back to `expected`)."""
    deadline = time.monotonic() + timeout
    while True:
        vitals = worker_vitals(daemon)
        if expected is None or vitals[2] <= expected or time.monotonic() > deadline:
            return vitals
        time.sleep(0.05)


def test_hypothesis_payloads_over_udp_never_cost_the_worker(oversipd_daemon):
    """Each payload hypothesis makes, then an OPTIONS: every response parses, the worker stays.

    SIP_FUZZ_EXAMPLES=3000 runs a longer campaign (300 by default).
    """
    from hypothesis import HealthCheck, given, settings, strategies as st

    server = sip_daemon(oversipd_daemon)
    client = UdpClient(server)
    (pid,) = server.daemon.worker_pids().values()
    real = request_bytes("INVITE", port=server.port, via_port=client.port, body=b"v=0\r\n")
    head, _, body = real.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    counter = iter(range(10**9))

    @st.composite
    def mutated(draw) -> bytes:
        edited = list(lines)
        for _ in range(draw(st.integers(1, 3))):
            index = draw(st.sampled_from([i for i, line in enumerate(edited) if not line.startswith(b"Via:")]))
            edited[index] = draw(st.one_of(st.binary(max_size=80), st.just(b""),
                                           st.builds(lambda line, junk: line + junk, st.just(edited[index]),
                                                     st.binary(max_size=20))))
        return b"\r\n".join(edited) + b"\r\n\r\n" + body

    @settings(max_examples=int(os.environ.get("SIP_FUZZ_EXAMPLES", "300")), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.one_of(st.binary(min_size=1, max_size=1500), mutated()))
    def one(payload: bytes) -> None:
        sentinel = f"sentinel-{next(counter)}"
        for response in udp_round(client, [payload], sentinel):
            assert 100 <= response.status <= 699

    one()
    assert set(server.daemon.worker_pids().values()) == {pid}
