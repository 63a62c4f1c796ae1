"""Shared by the [listen.*] tests: ports, the repo's status module, a tiny HTTP client."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STATUS_SOURCE = (REPO / "modules.d" / "status.py").read_text()
# This branch's tests use only ports 22000-22999 (8060 belongs to `make run`).
PORT_RANGE = range(22000, 23000)
CLIENT_TIMEOUT = 15.0

# The server script of most tests: tells the test when a worker is serving.
SERVING_SCRIPT = """
from oversipd import SystemEvents
from oversipd.testing import record

@SystemEvents.on_started
def serving():
    record("serving")
"""


def free_port(*kinds: str) -> int:
    """A port of PORT_RANGE free right now for every kind given ("tcp", "udp")."""
    kinds = kinds or ("tcp",)
    start = random.randrange(len(PORT_RANGE))
    for offset in range(len(PORT_RANGE)):
        port = PORT_RANGE[(start + offset) % len(PORT_RANGE)]
        if all(_can_bind(kind, port) for kind in kinds):
            return port
    raise RuntimeError("no free port in 22000-22999")


def _can_bind(kind: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    try:
        if kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def listen_table(address: str, **extra: Any) -> dict[str, Any]:
    return {"address": address, **extra}


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one complete HTTP response; ValueError when incomplete."""
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError(f"incomplete response head: {data[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        raise ValueError(f"incomplete body: {len(body)} of {length} bytes")
    return status, headers, body[:length]


def http_request(port: int, raw: bytes, host: str = "127.0.0.1",
                 family: int = socket.AF_INET) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` on a new connection, read until the server closes, parse the answer."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect((host, port))
        sock.sendall(raw)
        return parse_response(read_until_closed(sock))


def http_get(port: int, path: str = "/health", method: str = "GET", **where: Any) -> tuple[int, dict[str, str], bytes]:
    raw = f"{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
    return http_request(port, raw, **where)


def health(port: int, **where: Any) -> dict[str, Any]:
    status, _, body = http_get(port, **where)
    assert status == 200, (status, body)
    return json.loads(body)
