#!/usr/bin/env python3
"""Requests/s of GET /health: oversipd with 1 and 2 workers vs one plain asyncio process.

All three servers run the same code (modules.d/status.py's StatusServer on
an asyncio SelectorEventLoop); only the process model differs. They are
started once and measured in turn with Debian's `wrk`, several rounds
interleaved (each round starting with the next server), so that
background load hits all three alike; the medians and their ratios to
the plain server are printed.

    python bench/http_throughput.py [--duration 5] [--rounds 3] [--connections 50]

`wrk` itself needs CPU: on a 2-core machine it competes with the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATUS_MODULE = REPO / "modules.d" / "status.py"
DEFAULT_BASE_PORT = 22900
READY_TIMEOUT = 30.0
RATE = re.compile(rb"Requests/sec:\s+([0-9.]+)")
ERRORS = re.compile(rb"(Non-2xx or 3xx responses|Socket errors):.*")


def load_status_module():
    spec = importlib.util.spec_from_file_location("status_bench", STATUS_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_plain(port: int) -> None:
    """The baseline: one process, one SelectorEventLoop, the status module's server."""
    from oversipd.listeners import ListeningSocket

    status = load_status_module()
    settings = status.read_settings({})
    # As in oversipd: listen() once with backlog 1024, which asyncio's
    # start_server(backlog=1) must not shrink (see oversipd/listeners.py).
    sock = ListeningSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    socket.socket.listen(sock, 1024)
    sock.setblocking(False)

    async def main() -> None:
        server = status.StatusServer(status.health, settings["timeout"], settings["max_request_bytes"])
        await server.start(sock)
        print("ready", flush=True)
        await asyncio.Event().wait()

    loop = asyncio.SelectorEventLoop()
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_until_complete(main())
    except RuntimeError:
        pass  # stopped by SIGTERM


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen | None = None
    rates: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def start_plain(server: Server) -> None:
    server.process = subprocess.Popen([sys.executable, __file__, "--serve-plain", str(server.port)],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = server.process.stdout.readline()
    if line.strip() != b"ready":
        raise SystemExit(f"{server.name}: the plain server did not start")


def start_oversipd(server: Server, workers: int, directory: Path) -> None:
    """oversipd with only the status module, its log quiet, ready when READY=1 arrives."""
    modules = directory / f"modules-{workers}"
    modules.mkdir(mode=0o755)
    shutil.copy(STATUS_MODULE, modules / "status.py")
    (modules / "status.py").chmod(0o644)
    conf = directory / f"oversipd-{workers}.conf"
    conf.write_text(f'[core]\nworkers = {workers}\nmodules_dir = "{modules}"\nserver_script = ""\n'
                    f'log_level = "warn"\n\n[listen.status]\naddress = "tcp://127.0.0.1:{server.port}"\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(directory / f"notify-{workers}")
    notify.bind(notify_path)
    notify.settimeout(READY_TIMEOUT)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    server.process = subprocess.Popen([sys.executable, "-m", "oversipd", "run", "-c", str(conf)],
                                      env=env, stdin=subprocess.DEVNULL)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
    except TimeoutError:
        raise SystemExit(f"{server.name}: oversipd did not become ready") from None
    finally:
        notify.close()


def measure(server: Server, args: argparse.Namespace) -> None:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
               f"http://127.0.0.1:{server.port}/health"]
    output = subprocess.run(command, capture_output=True, check=True).stdout
    match = RATE.search(output)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{output.decode()}")
    server.rates.append(float(match.group(1)))
    server.errors += [m.group(0).decode() for m in ERRORS.finditer(output)]


def stop(server: Server) -> None:
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help=f"three ports from this one (default {DEFAULT_BASE_PORT})")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--serve-plain", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args()


def report(servers: list[Server], args: argparse.Namespace) -> dict:
    baseline = statistics.median(servers[0].rates)
    figures = {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
               "wrk_threads": args.threads, "cpus": os.cpu_count(), "servers": {}}
    print(f"GET /health, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
          f"{args.rounds} interleaved rounds, medians ({os.cpu_count()} CPUs)")
    for server in servers:
        median = statistics.median(server.rates)
        figures["servers"][server.name] = {"requests_per_s": server.rates, "median": median,
                                           "ratio_to_plain": median / baseline, "errors": server.errors}
        runs = ", ".join(f"{rate:.0f}" for rate in server.rates)
        print(f"  {server.name:<22} {median:>9.0f} req/s  x{median / baseline:.2f} of plain   ({runs})"
              + (f"  {'; '.join(server.errors)}" if server.errors else ""))
    return figures


def main() -> int:
    args = parse_args()
    if args.serve_plain is not None:
        serve_plain(args.serve_plain)
        return 0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or `make bench-http`)")
    servers = [Server("plain asyncio", args.base_port), Server("oversipd 1 worker", args.base_port + 1),
               Server("oversipd 2 workers", args.base_port + 2)]
    with tempfile.TemporaryDirectory(prefix="ovs-bench-") as directory:
        os.chmod(directory, 0o755)
        try:
            start_plain(servers[0])
            start_oversipd(servers[1], 1, Path(directory))
            start_oversipd(servers[2], 2, Path(directory))
            for round_number in range(args.rounds):
                # Each round starts with another server, so that whatever
                # comes first or last in a round hits each of them alike.
                shift = round_number % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    measure(server, args)
        finally:
            for server in servers:
                stop(server)
    figures = report(servers, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
