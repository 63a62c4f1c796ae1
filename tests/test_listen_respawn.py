"""SPEC §7: no client meets a refused connection while workers are killed and the daemon reloads.

A TCP client keeps opening connections and asking GET /health; a UDP client
keeps sending numbered datagrams to an echo module. Meanwhile the test
SIGKILLs a worker and sends a HUP, again and again. Only what a killed
worker had already taken (an accepted connection, a datagram it had read)
may be lost: at most one per SIGKILL with one request in flight at a time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from oversipd.slots import QUICK_DEATH_SECONDS

from listen_helpers import CLIENT_TIMEOUT, SERVING_SCRIPT, STATUS_SOURCE, free_port, listen_table, parse_response

ECHO_SOURCE = """
import asyncio, os
import oversipd
from oversipd import SystemCallbacks

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, address):
        self.transport.sendto(data + b" %d" % os.getpid(), address)

transport = None

@SystemCallbacks.on_started
async def start():
    global transport
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, sock=oversipd.listen_socket("echo"))

@SystemCallbacks.on_terminated
def stop(error):
    if transport is not None:
        transport.close()
"""
REQUEST = b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
DATAGRAM_PACE = 0.001   # seconds between datagrams: ~1000/s, well within the socket buffer
DRAIN_WAIT = 2.0        # after the last answer to the end marker, for stragglers of the other worker


@dataclass
class TcpTally:
    answered: int = 0
    refused: int = 0
    lost: int = 0          # connection reset or closed before a complete answer
    hung: int = 0
    pids: set[int] = field(default_factory=set)
    slowest: float = 0.0


class TcpClient(threading.Thread):
    """One request at a time, each on a new connection, until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.tally = TcpTally()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.request_once()

    def request_once(self) -> None:
        began = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT) as sock:
                sock.sendall(REQUEST)
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
        except ConnectionRefusedError:
            self.tally.refused += 1
            return
        except (ConnectionResetError, BrokenPipeError):
            self.tally.lost += 1
            return
        except TimeoutError:
            self.tally.hung += 1
            return
        try:
            status, _, body = parse_response(data)
        except ValueError:
            self.tally.lost += 1
            return
        assert status == 200, data
        self.tally.answered += 1
        self.tally.pids.add(json.loads(body)["pid"])
        self.tally.slowest = max(self.tally.slowest, time.monotonic() - began)


class UdpClient(threading.Thread):
    """Numbered datagrams at a steady pace; a second thread collects the echoes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.address = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.sent = 0
        self.answered: set[int] = set()
        self.pids: set[int] = set()
        self.changed = threading.Condition()
        self.done = threading.Event()
        self.receiver = threading.Thread(target=self.receive, daemon=True)

    def run(self) -> None:
        self.receiver.start()
        while not self.done.is_set():
            self.sock.sendto(b"%d" % self.sent, self.address)
            self.sent += 1
            time.sleep(DATAGRAM_PACE)  # pacing, not waiting for anything

    def receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(256)
            except TimeoutError:
                continue
            except OSError:
                return
            number, pid = data.split()
            with self.changed:
                if number == b"end":
                    self.answered.add(-1)
                else:
                    self.answered.add(int(number))
                self.pids.add(int(pid))
                self.changed.notify_all()

    def finish(self) -> int:
        """Stop sending, collect the last echoes; the number of datagrams never answered."""
        self.done.set()
        self.join(CLIENT_TIMEOUT)
        with self.changed:
            # Everything sent before "end" was taken from the socket's queue
            # before it (one queue, first in first out): once "end" comes back,
            # only the other worker's last echo may still be on its way.
            deadline = time.monotonic() + CLIENT_TIMEOUT
            while -1 not in self.answered and time.monotonic() < deadline:
                self.sock.sendto(b"end", self.address)
                self.changed.wait(0.5)
            assert -1 in self.answered, "the echo module never answered the end marker"
            self.changed.wait_for(lambda: len(self.answered) - 1 >= self.sent, DRAIN_WAIT)
            lost = self.sent - (len(self.answered) - 1)
        self.sock.close()
        return lost


def serving_workers(daemon) -> dict[int, dict]:
    """{slot: the latest "serving" event of that slot}."""
    latest: dict[int, dict] = {}
    for event in daemon.find("serving"):
        latest[event["worker"]] = event
    return latest


def wait_out_quick_death_window(event: dict) -> None:
    # A worker killed within QUICK_DEATH_SECONDS of its fork is a "quick
    # death" and its slot is respawned with a growing back-off (SPEC §5);
    # this test is about sockets, so each victim has outlived that window.
    # Its "serving" event came after its fork, so this is on the safe side.
    remaining = event["t"] / 1e9 + QUICK_DEATH_SECONDS + 0.05 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


@pytest.mark.parametrize("workers, rounds", [(2, 20), (1, 4)], ids=["2-workers", "1-worker"])
def test_no_refused_connection_while_workers_die_and_reload(oversipd_daemon, workers, rounds):
    tcp_port, udp_port = free_port("tcp"), free_port("udp")
    daemon = oversipd_daemon(
        modules={"status": STATUS_SOURCE, "echo": ECHO_SOURCE}, server_script=SERVING_SCRIPT,
        core={"workers": workers, "log_level": "info", "respawn_limit": 0},
        extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{tcp_port}"),
                      "listen.echo": listen_table(f"udp://127.0.0.1:{udp_port}")})
    daemon.wait_events("serving", count=workers)
    tcp, udp = TcpClient(tcp_port), UdpClient(udp_port)
    tcp.start()
    udp.start()

    kills = hups = 0
    for round_number in range(rounds):
        slot = 1 + round_number % workers
        victim = serving_workers(daemon)[slot]
        wait_out_quick_death_window(victim)
        os.kill(victim["pid"], signal.SIGKILL)
        kills += 1
        daemon.signal(signal.SIGHUP)  # while the slot is being respawned
        hups += 1
        daemon.wait_events("serving", count=workers + kills)
        daemon.wait_notification("READY=1", count=1 + hups)  # that reload is done
        assert serving_workers(daemon)[slot]["pid"] != victim["pid"]

    tcp.done.set()
    tcp.join(CLIENT_TIMEOUT * 2)
    udp_lost = udp.finish()
    report = (f"{workers} worker(s), {kills} SIGKILLs, {hups} HUPs | TCP: {tcp.tally.answered} answered, "
              f"{tcp.tally.refused} refused, {tcp.tally.lost} lost to SIGKILL, {tcp.tally.hung} hung, "
              f"slowest {tcp.tally.slowest * 1000:.0f} ms, {len(tcp.tally.pids)} worker pids | "
              f"UDP: {udp.sent} sent, {udp_lost} lost, {len(udp.pids)} worker pids")
    print(f"\nlisten-respawn: {report}")

    assert tcp.tally.refused == 0, report
    assert tcp.tally.hung == 0, report
    assert tcp.tally.lost <= kills, report
    assert udp_lost <= kills, report
    assert len(tcp.tally.pids) >= 2 and tcp.tally.answered > kills, report  # replacements served too
    assert daemon.stop() == 0
