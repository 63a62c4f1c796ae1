#!/usr/bin/env python3
"""µs per SIP message over WebSocket, server side: parse a masked 1 KB text frame, serialise the 1 KB answer.

The two sans-I/O WebSocket libraries oversipd could use (issue 19), in one
run, rounds interleaved: `websockets` (ServerProtocol) and `wsproto`
(WSConnection).  Each is taken past the upgrade first, then timed on
`number` messages: bytes of one client frame in, the message out as an
event, one text frame of the same size serialised back.  CPU time of this
process (time.process_time_ns); the median per library is printed.

    python bench/ws_frames.py [--rounds 15] [--number 5000]
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import os
import statistics
import time
from typing import Callable

MESSAGE = (b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
           b"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKasudf;rport\r\n"
           b"From: <sip:alice@example.com>;tag=1928301774\r\nTo: <sip:bob@example.com>\r\n"
           b"Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
           b"Content-Type: text/plain\r\n")
MESSAGE += b"X-Pad: " + b"x" * (1024 - len(MESSAGE) - 30) + b"\r\nContent-Length: 0\r\n\r\n"
UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Protocol: sip\r\n\r\n")


def client_frame(payload: bytes) -> bytes:
    """One masked text frame, as a browser sends it."""
    key = os.urandom(4)
    masked = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + key + masked


def websockets_round(frame: bytes, number: int) -> float:
    from websockets.server import ServerProtocol
    protocol = ServerProtocol(subprotocols=["sip"])
    protocol.receive_data(UPGRADE)
    protocol.send_response(protocol.accept(protocol.events_received()[0]))
    protocol.data_to_send()
    start = time.process_time_ns()
    for _ in range(number):
        protocol.receive_data(frame)
        (event,) = protocol.events_received()
        protocol.send_text(event.data)
        protocol.data_to_send()
    return (time.process_time_ns() - start) / number / 1000


def wsproto_round(frame: bytes, number: int) -> float:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Message, Request
    connection = WSConnection(ConnectionType.SERVER)
    connection.receive_data(UPGRADE)
    request = next(event for event in connection.events() if isinstance(event, Request))
    connection.send(AcceptConnection(subprotocol="sip"))
    del request
    start = time.process_time_ns()
    for _ in range(number):
        connection.receive_data(frame)
        (event,) = connection.events()
        assert isinstance(event, Message)
        connection.send(Message(data=event.data))
    return (time.process_time_ns() - start) / number / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=5000)
    args = parser.parse_args()
    frame = client_frame(MESSAGE)
    libraries: dict[str, Callable[[bytes, int], float]] = {"websockets": websockets_round,
                                                           "wsproto": wsproto_round}
    results: dict[str, list[float]] = {name: [] for name in libraries}
    names = list(libraries)
    for round_number in range(args.rounds):
        for name in names[round_number % len(names):] + names[:round_number % len(names)]:
            results[name].append(libraries[name](frame, args.number))
    print(f"{len(MESSAGE)}-byte SIP message, {args.rounds} rounds x {args.number}: "
          "µs per frame parsed + frame serialised (median)")
    for name, times in results.items():
        print(f"  {name} {importlib.metadata.version(name)}: {statistics.median(times):.1f} µs")


if __name__ == "__main__":
    main()
