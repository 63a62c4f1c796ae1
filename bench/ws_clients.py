"""The load generator of `make bench-ws`: SIP over WebSocket (and TLS) clients in one asyncio process.

`bench/ws.py` starts several of these processes (`python -m bench.ws_clients
MODE ...`) so that the generator is not what is measured, and talks to each
over its stdin and stdout, one line at a time:

* relay: `--pairs` client pairs (A, B) open WebSockets and REGISTER; the
  process prints `ready`, waits for `go` on stdin, then every A sends
  MESSAGEs to its B through the server at `--rate` per second in all;
  B answers 200 and A waits for that 200.  Then one JSON line of counts.
* idle: `--clients` WSS clients REGISTER and stay (answering pings); the
  process prints `ready` with counts, waits for `stop`, then a JSON line
  (pings answered, connections the server closed).
* handshakes: `--concurrency` loops that each open a new TLS connection
  (no session reuse), send one OPTIONS, read its response and close, for
  `--seconds`; then a JSON line (handshakes completed, failures, the TLS
  version and cipher seen).

The WebSocket side is `websockets`' sans-I/O ClientProtocol under an
asyncio.Protocol: no task per connection, so 10 000 idle clients fit in a
few processes.  SIP is written and read with bytes operations only (the
generator must cost little per message); CPU of each process is in its JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
from typing import Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

HOST = "127.0.0.1"
ANSWER_TIMEOUT = 2.0        # a MESSAGE without its 200 by then counts as failed
CONNECT_TIMEOUT = 30.0


def client_context() -> ssl.SSLContext:
    """TLS 1.3, no certificate check (the bench's certificate is self-signed), no session reuse."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_TICKET
    return context


# --- SIP, with bytes operations ------------------------------------------------------


def header(message: bytes, name: bytes) -> bytes:
    """The value of the first header `name` (exact case, as these clients and both servers write it)."""
    start = message.find(b"\r\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 3
    return message[start:message.find(b"\r\n", start)].strip()


def register(user: str, tag: str, transport: str = "ws") -> bytes:
    host = f"{tag}.invalid"
    return (f"REGISTER sip:{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} {host};branch=z9hG4bK{tag}r;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@{HOST}>;tag={tag}\r\nTo: <sip:{user}@{HOST}>\r\n"
            f"Call-ID: reg-{tag}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:{user}@{host};transport={transport}>;expires=3600\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def message(sender: str, receiver: str, tag: str, cseq: int) -> bytes:
    body = b"hello"
    return (f"MESSAGE sip:{receiver}@{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/WS {tag}.invalid;branch=z9hG4bK{tag}m{cseq};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{sender}@{HOST}>;tag={tag}\r\nTo: <sip:{receiver}@{HOST}>\r\n"
            f"Call-ID: msg-{tag}\r\nCSeq: {cseq} MESSAGE\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def ok_for(request: bytes) -> bytes:
    """200 OK to a request: its Via lines, From, To (with a tag), Call-ID and CSeq copied."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    kept = [line for line in head if line[:4].lower() in (b"via:", b"from", b"call", b"cseq")]
    kept += [line + b";tag=b" for line in head if line[:3].lower() == b"to:"]
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(kept) + b"\r\nContent-Length: 0\r\n\r\n"


def status_of(response: bytes) -> int:
    return int(response[8:11]) if response.startswith(b"SIP/2.0 ") else 0


# --- one WebSocket client ---------------------------------------------------------------


class WsClient(asyncio.Protocol):
    """One SIP-over-WebSocket connection; `on_sip(client, bytes)` gets every SIP message."""

    def __init__(self, url: str, on_sip: Callable[["WsClient", bytes], None]) -> None:
        self.protocol = ClientProtocol(parse_uri(url), subprotocols=["sip"])
        self.on_sip = on_sip
        self.transport: asyncio.Transport | None = None
        self.open = asyncio.get_running_loop().create_future()
        self.pings = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.protocol.send_request(self.protocol.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                if event.status_code == 101 and not self.open.done():
                    self.open.set_result(None)
                elif not self.open.done():
                    self.open.set_exception(ConnectionError(f"upgrade refused: {event.status_code}"))
            elif isinstance(event, Frame):
                if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                    self.on_sip(self, bytes(event.data))
                elif event.opcode == Opcode.PING:
                    self.pings += 1      # the pong is queued by the protocol
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed before the upgrade"))

    def send_sip(self, data: bytes) -> None:
        self.protocol.send_text(data)
        self.flush()

    def flush(self) -> None:
        data = self.protocol.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(data))


async def connect(url: str, on_sip: Callable[[WsClient, bytes], None],
                  context: ssl.SSLContext | None) -> WsClient:
    loop = asyncio.get_running_loop()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(url, on_sip), HOST, port, ssl=context), CONNECT_TIMEOUT)
    await asyncio.wait_for(client.open, CONNECT_TIMEOUT)
    return client


class Registrations:
    """REGISTERs sent and their final responses, by Call-ID."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[int]] = {}

    async def register(self, client: WsClient, user: str, tag: str, transport: str) -> int:
        future = asyncio.get_running_loop().create_future()
        self.waiting[f"reg-{tag}".encode()] = future
        client.send_sip(register(user, tag, transport))
        return await asyncio.wait_for(future, CONNECT_TIMEOUT)

    def answer(self, data: bytes) -> bool:
        """True when `data` was the final response to one of our REGISTERs."""
        future = self.waiting.get(header(data, b"Call-ID"))
        status = status_of(data)
        if future is None or status < 200:
            return future is not None
        del self.waiting[header(data, b"Call-ID")]
        if not future.done():
            future.set_result(status)
        return True


def process_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def read_line() -> str:
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()


def say(line: str) -> None:
    print(line, flush=True)


# --- relay: MESSAGE A -> server -> B, 200 back ----------------------------------------------


class Relay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.registrations = Registrations()
        self.pending: dict[bytes, float] = {}      # branch of a MESSAGE sent -> when
        self.latencies: list[float] = []
        self.counts = {"sent": 0, "ok": 0, "failed": 0, "late": 0}
        self.failed_statuses: dict[int, int] = {}

    def on_sip(self, client: WsClient, data: bytes) -> None:
        if data.startswith(b"MESSAGE "):
            client.send_sip(ok_for(data))          # B's answer
            return
        if self.registrations.answer(data):
            return
        via = header(data, b"Via")
        branch = via[via.find(b"branch=") + 7:].split(b";", 1)[0]
        sent = self.pending.pop(branch, None)
        status = status_of(data)
        if sent is None or status < 200:
            if sent is not None:
                self.pending[branch] = sent        # a provisional response: wait on
            return
        if status == 200:
            self.counts["ok"] += 1
            self.latencies.append(time.monotonic() - sent)
        else:
            self.counts["failed"] += 1
            self.failed_statuses[status] = self.failed_statuses.get(status, 0) + 1

    async def run(self) -> dict:
        args = self.args
        pairs = []
        for index in range(args.first, args.first + args.pairs):
            a = await connect(args.url, self.on_sip, None)
            b = await connect(args.url, self.on_sip, None)
            for client, user, tag in ((a, f"a{index}", f"a{index}x{os.getpid()}"),
                                      (b, f"b{index}", f"b{index}x{os.getpid()}")):
                status = await self.registrations.register(client, user, tag, "ws")
                if status != 200:
                    raise SystemExit(f"ws_clients: REGISTER of {user} got {status}")
            pairs.append((a, f"a{index}", f"b{index}", f"a{index}y{os.getpid()}"))
        say("ready")
        if await read_line() != "go":
            return {}
        cpu_before, began = process_cpu(), time.monotonic()
        total = round(args.rate * args.seconds)
        for number in range(total):
            due = began + number / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            a, sender, receiver, tag = pairs[number % len(pairs)]
            cseq = number + 1
            self.pending[f"z9hG4bK{tag}m{cseq}".encode()] = time.monotonic()
            a.send_sip(message(sender, receiver, tag, cseq))
            self.counts["sent"] += 1
        sending = time.monotonic() - began
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.counts["late"] = len(self.pending)
        self.latencies.sort()
        return {**self.counts, "failed_statuses": self.failed_statuses, "planned": total, "sending_seconds": sending,
                "wall_seconds": time.monotonic() - began, "cpu_seconds": process_cpu() - cpu_before,
                "latency_p50": percentile(self.latencies, 0.5), "latency_p99": percentile(self.latencies, 0.99)}


def percentile(ordered: list[float], share: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else None


# --- idle: WSS clients that register and stay ---------------------------------------------------


async def idle(args: argparse.Namespace) -> dict:
    registrations = Registrations()
    transport = args.url.split(":", 1)[0]
    context = client_context() if transport == "wss" else None
    clients: list[WsClient] = []
    failed = 0
    semaphore = asyncio.Semaphore(args.concurrency)

    async def one(index: int) -> None:
        nonlocal failed
        async with semaphore:
            try:
                client = await connect(args.url, lambda c, d: registrations.answer(d), context)
                tag = f"i{index}x{os.getpid()}"
                if await registrations.register(client, f"i{index}", tag, transport) == 200:
                    clients.append(client)
                    return
            except (OSError, asyncio.TimeoutError, ConnectionError) as error:
                if not failed:
                    print(f"ws_clients: the first failed client: {error!r}", file=sys.stderr, flush=True)
            failed += 1

    await asyncio.gather(*(one(index) for index in range(args.first, args.first + args.clients)))
    say(json.dumps({"ready": len(clients), "failed": failed}))
    await read_line()
    return {"registered": len(clients), "failed": failed, "pings": sum(c.pings for c in clients),
            "closed_by_server": sum(c.closed for c in clients)}


# --- handshakes: a new TLS connection, one OPTIONS, close -------------------------------------------


async def handshakes(args: argparse.Namespace) -> dict:
    counts = {"completed": 0, "failed": 0}
    seen: set[str] = set()
    deadline = time.monotonic() + args.seconds
    port = int(args.url.rsplit(":", 1)[1])
    context = client_context()

    async def loop(worker: int) -> None:
        number = 0
        while time.monotonic() < deadline:
            number += 1
            tag = f"h{worker}x{number}x{os.getpid()}"
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, port, ssl=context), CONNECT_TIMEOUT)
                tls = writer.get_extra_info("ssl_object")
                seen.add(f"{tls.version()} {tls.cipher()[0]}")
                writer.write((f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
                              f"Via: SIP/2.0/TLS {HOST}:9;branch=z9hG4bK{tag};rport\r\nMax-Forwards: 70\r\n"
                              f"From: <sip:bench@{HOST}>;tag={tag}\r\nTo: <sip:{HOST}>\r\nCall-ID: {tag}\r\n"
                              f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode())
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
                writer.transport.abort()     # no close_notify round trip: the next handshake
                counts["completed" if status_of(answer) == 200 else "failed"] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
                counts["failed"] += 1

    cpu_before, began = process_cpu(), time.monotonic()
    await asyncio.gather(*(loop(worker) for worker in range(args.concurrency)))
    return {**counts, "seconds": time.monotonic() - began, "cpu_seconds": process_cpu() - cpu_before,
            "tls": sorted(seen)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_clients", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("relay", "idle", "handshakes"))
    parser.add_argument("url", help="ws://127.0.0.1:PORT, wss://127.0.0.1:PORT or tls://127.0.0.1:PORT")
    parser.add_argument("--first", type=int, default=0, help="first user index (unique per process)")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="MESSAGEs per second from this process")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50, help="connections opened at once")
    return parser.parse_args(argv)


async def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.mode == "relay":
        result = await Relay(args).run()
    elif args.mode == "idle":
        result = await idle(args)
    else:
        result = await handshakes(args)
    say(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
