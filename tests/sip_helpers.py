"""Shared by the SIP tests: a daemon with SIP listeners, raw SIP requests, sipp runs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from oversipd.sip.counters import read_counters
from oversipd.sip.syntax.message import Response, parse_message

from listen_helpers import free_port, listen_table

SIPP_DIR = Path(__file__).resolve().parent / "sipp"
SIPP = shutil.which("sipp")
CLIENT_TIMEOUT = 15.0
START_TIMEOUT = 10.0

# The server script most SIP tests use: every request is recorded, OPTIONS
# to us gets 200, an INVITE 486, anything else 404.
RECORDING_SCRIPT = """
from oversipd import SipEvents
from oversipd.testing import record

@SipEvents.on_request
def on_request(request):
    record("request", method=request.sip_method, call_id=request.call_id, cseq=request.cseq,
           transport=request.transport)
    if request.sip_method == "ACK":
        return
    if request.sip_method == "OPTIONS" and request.destination_myself():
        request.reply(200)
    elif request.sip_method == "INVITE":
        request.reply(486)
    else:
        request.reply(404, "Not Here")
"""


@dataclass
class SipServer:
    daemon: Any
    port: int
    host: str = "127.0.0.1"


def sip_daemon(oversipd_daemon, script: str = RECORDING_SCRIPT, workers: int = 1, host: str = "127.0.0.1",
               sip: dict[str, Any] | None = None, start: bool = True, port: int | None = None,
               **options: Any) -> SipServer:
    """A daemon serving SIP over UDP and TCP on one free port of `host` (or on `port`)."""
    if port is None:
        port = free_port("tcp", "udp") if host == "127.0.0.1" else _free_port6()
    bracketed = f"[{host}]" if ":" in host else host
    tables = {"listen.sip_udp": listen_table(f"udp://{bracketed}:{port}"),
              "listen.sip_tcp": listen_table(f"tcp://{bracketed}:{port}"),
              "sip": {"listen": ["sip_udp", "sip_tcp"], **(sip or {})}}
    core = {"workers": workers, **options.pop("core", {})}
    daemon = oversipd_daemon(start=start, server_script=script, core=core,
                             extra_tables={**tables, **options.pop("extra_tables", {})}, **options)
    return SipServer(daemon, port, host)


def _free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1", 0))
        return probe.getsockname()[1]


def request_bytes(method: str = "OPTIONS", *, host: str = "127.0.0.1", port: int, via_port: int = 5060,
                  transport: str = "UDP", branch: str | None = None, call_id: str | None = None,
                  cseq: int = 1, to_tag: str | None = None, extra: str = "", body: bytes = b"",
                  user: str = "", max_forwards: int | None = 70) -> bytes:
    """A well-formed request to `host:port`."""
    branch = branch or "z9hG4bK" + uuid.uuid4().hex
    call_id = call_id or uuid.uuid4().hex
    bracketed = f"[{host}]" if ":" in host else host
    target = f"sip:{user + '@' if user else ''}{bracketed}:{port}"
    lines = [f"{method} {target} SIP/2.0",
             f"Via: SIP/2.0/{transport} {bracketed}:{via_port};branch={branch};rport",
             "From: <sip:alice@example.com>;tag=a1",
             f"To: <{target}>" + (f";tag={to_tag}" if to_tag else ""),
             f"Call-ID: {call_id}",
             f"CSeq: {cseq} {'INVITE' if method == 'ACK' and extra == 'ack-invite' else method}"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    if extra and extra != "ack-invite":
        lines.append(extra)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class UdpClient:
    """A UDP socket that sends requests and reads (parsed) responses."""

    def __init__(self, server: SipServer) -> None:
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(CLIENT_TIMEOUT)
        self.sock.bind((server.host, 0))
        self.port = self.sock.getsockname()[1]
        self.server = server

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, (self.server.host, self.server.port))

    def request(self, method: str = "OPTIONS", **fields: Any) -> bytes:
        data = request_bytes(method, host=self.server.host, port=self.server.port, via_port=self.port, **fields)
        self.send(data)
        return data

    def response(self, timeout: float = CLIENT_TIMEOUT) -> Response:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65535)
        message = parse_message(data)
        assert isinstance(message, Response), data
        return message

    def close(self) -> None:
        self.sock.close()


class StreamReader:
    """SIP messages off a stream, framed by Content-Length; CRLF pongs between them are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.pongs = 0

    def message(self) -> bytes:
        while True:
            while self.buffer.startswith(b"\r\n"):
                self.buffer = self.buffer[2:]
                self.pongs += 1
            head, separator, rest = self.buffer.partition(b"\r\n\r\n")
            if separator:
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith((b"content-length:", b"l:"))), 0)
                if len(rest) >= length:
                    self.buffer = rest[length:]
                    return head + separator + rest[:length]
            chunk = self.sock.recv(65535)
            if not chunk:
                raise EOFError(f"connection closed after {self.buffer!r}")
            self.buffer += chunk


def read_stream_message(sock: socket.socket) -> bytes:
    """The one SIP message expected on a stream."""
    return StreamReader(sock).message()


def run_sipp(server: SipServer, scenario: str, *args: str, calls: int = 10, rate: int = 10,
             transport: str = "u1", timeout: float = 60.0, directory: Path | None = None) -> subprocess.CompletedProcess[str]:
    """sipp with one of tests/sipp/*.xml against `server`; its exit status 0 means every call passed."""
    assert SIPP is not None, "sipp is missing: `make test` installs Debian's sip-tester"
    local_port = free_port("tcp", "udp")
    command = [SIPP, "-sf", str(SIPP_DIR / scenario), "-t", transport, "-i", server.host,
               "-p", str(local_port), "-m", str(calls), "-r", str(rate), "-nostdin",
               "-timeout", f"{timeout:g}s", "-timeout_error", *args, f"{server.host}:{server.port}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout + 30,
                          cwd=directory, stdin=subprocess.DEVNULL)


def sipp_counts(result: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """(successful, failed) calls from sipp's final statistics screen."""
    def cumulated(label: str) -> int:
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(label))
        return int(line.split("|")[2].strip())
    return cumulated("Successful call"), cumulated("Failed call")


class Callee:
    """A sipp UAS (or any scenario in server mode) on a free port, until stopped."""

    def __init__(self, scenario: str, transport: str = "u1", calls: int = 20) -> None:
        self.port = free_port("tcp", "udp")
        self.process = subprocess.Popen(
            [SIPP, "-sf", str(SIPP_DIR / scenario), "-t", transport, "-i", "127.0.0.1", "-p", str(self.port),
             "-m", str(calls), "-nostdin", "-timeout", "60s", "-timeout_error"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self.wait_listening()

    def wait_listening(self) -> None:
        """Until sipp's socket is bound (a TCP callee not yet listening would refuse the proxy)."""
        process = psutil.Process(self.process.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if any(c.laddr and c.laddr.port == self.port for c in process.net_connections("inet")):
                return
            assert self.process.poll() is None, self.process.communicate()[0]
            time.sleep(0.05)
        raise TimeoutError(f"sipp did not bind port {self.port}")

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        output, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, output

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
def counters(pid_file: Path, name: str) -> int:
    """The SIP counter `name` summed over the workers (`oversipd status` reads the same)."""
    rows = read_counters(pid_file) or {}
    return sum(row[name] for row in rows.values())


def wait_counter(pid_file: Path, name: str, value: int, timeout: float = CLIENT_TIMEOUT) -> None:
    """Until the workers' counter `name` reached `value` (shared memory: there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while counters(pid_file, name) < value:
        assert time.monotonic() < deadline, f"counter {name} stayed at {counters(pid_file, name)}, not {value}"
        time.sleep(0.01)
