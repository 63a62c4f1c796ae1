"""The three measurements of `make bench-ws`, each against one running server (bench/ws_servers.py).

The clients are bench/ws_clients.py processes (several, so that one
Python process is not the limit); this module starts them, starts and
ends their runs together, and reads the server's CPU (/proc/PID/schedstat,
as bench-sip) and memory around them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .sip_search import OVERTIME_SECONDS, OVERTIME_SHARE
from .sip_servers import SipServer

BENCH_ROOT = Path(__file__).resolve().parent.parent
SETTLE_SECONDS = 2.0        # after the last client registered, before memory is read


class Generators:
    """Several bench/ws_clients.py processes of one mode, driven line by line."""

    def __init__(self, mode: str, url: str, arguments: list[list[str]]) -> None:
        self.processes = [subprocess.Popen([sys.executable, "-m", "bench.ws_clients", mode, url, *extra],
                                           cwd=BENCH_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True)
                          for extra in arguments]

    def read_all(self) -> list[str]:
        lines = []
        for process in self.processes:
            line = process.stdout.readline().strip()
            if not line:
                self.end()
                raise SystemExit(f"bench-ws: a client process (pid {process.pid}) ended early "
                                 f"(status {process.wait()}); its error is above")
            lines.append(line)
        return lines

    def tell_all(self, line: str) -> None:
        for process in self.processes:
            process.stdin.write(line + "\n")
            process.stdin.flush()

    def results(self) -> list[dict]:
        results = [json.loads(line) for line in self.read_all()]
        self.end()
        return results

    def end(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal whole shares."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def process_ids(server: SipServer) -> set[int]:
    try:
        return {process.pid for process in server.processes()}
    except psutil.Error:
        return set()


def died(server: SipServer, pids_before: set[int]) -> bool:
    """The server, or one of its processes (a crashed Kamailio child takes the rest down), is gone."""
    return not server.alive() or not pids_before <= process_ids(server)


def cpu_spent(server: SipServer, before: dict[int, int]) -> tuple[int, int]:
    """CPU ns of the server since `before` (all processes, busiest one) — see bench/sip.py's Bench.run."""
    spent = [after - before.get(pid, 0) for pid, after in server.cpu_ns().items()]
    return sum(spent), max(spent, default=0)


# --- 1. MESSAGE relayed between WebSocket clients ----------------------------------------


@dataclass
class RelayRun:
    """One relay run; the fields Search and the report read (as bench/sip_search.py's Run)."""

    rate: float
    seconds: float
    clients: list[dict]
    cpu_ns: int
    busiest_ns: int

    def total(self, key: str) -> float:
        return sum(client[key] for client in self.clients)

    @property
    def messages(self) -> int:
        return int(self.total("ok"))

    @property
    def cpu_us_per_message(self) -> float:
        """Server CPU per MESSAGE relayed with its 200 (two SIP messages in, two out)."""
        return self.cpu_ns / 1000 / self.messages if self.messages else math.nan

    @property
    def busiest_share(self) -> float:
        return self.busiest_ns / self.cpu_ns if self.cpu_ns else math.nan

    @property
    def generator_load(self) -> float:
        """The busiest client process's CPU as a share of one core over its run: near 1, it was the limit."""
        return max((c["cpu_seconds"] / c["wall_seconds"] for c in self.clients if c["wall_seconds"]), default=0.0)

    @property
    def latency_p99(self) -> float | None:
        values = [c["latency_p99"] for c in self.clients if c["latency_p99"] is not None]
        return max(values) if values else None

    @property
    def failure(self) -> str:
        problems = []
        planned, ok = self.total("planned"), self.total("ok")
        if self.total("failed") or self.total("late") or ok < planned:
            statuses: dict[str, int] = {}
            for client in self.clients:
                for status, count in client["failed_statuses"].items():
                    statuses[status] = statuses.get(status, 0) + count
            answered = "".join(f", {count} × {status}" for status, count in sorted(statuses.items()))
            problems.append(f"{int(self.total('failed'))} failed{answered}, {int(self.total('late'))} unanswered in 2 s, "
                            f"{int(ok)}/{int(planned)} answered 200")
        # As bench-sip's runs: over WebSocket nothing is retransmitted, an overloaded server shows as
        # answers that lag behind (MESSAGEs queued up), or as clients that could not send at the pace.
        allowed = self.seconds * (1 + OVERTIME_SHARE) + OVERTIME_SECONDS
        sending = max(c["sending_seconds"] for c in self.clients)
        last_answer = max(c["wall_seconds"] for c in self.clients)
        if not problems and sending > allowed:
            problems.append(f"sending took {sending:.1f} s, not {self.seconds:g} s (the clients could not keep "
                            f"the pace; busiest client process {self.generator_load:.0%} of a core)")
        elif not problems and last_answer > allowed:
            problems.append(f"the last 200 came {last_answer:.1f} s into a {self.seconds:g} s run (MESSAGEs queued up)")
        return "; ".join(problems)

    @property
    def ok(self) -> bool:
        return not self.failure

    def as_json(self) -> dict:
        return {"rate": self.rate, "seconds": self.seconds, "ok": self.ok, "failure": self.failure,
                "cpu_ns": self.cpu_ns, "cpu_us_per_message": self.cpu_us_per_message,
                "generator_load": self.generator_load, "clients": self.clients}


def relay_run(server, rate: float, seconds: float, pairs: int, processes: int, first_user: int) -> RelayRun:
    """`pairs` WS client pairs over `processes` processes register, then MESSAGE A -> B at `rate` in all."""
    shares = [share for share in spread(pairs, processes) if share]
    arguments, first = [], first_user
    for share in shares:
        arguments.append(["--first", str(first), "--pairs", str(share), "--seconds", str(seconds),
                          "--rate", str(rate * share / pairs)])
        first += share
    generators = Generators("relay", server.ws_url, arguments)
    try:
        generators.read_all()                      # every pair registered
        before = server.cpu_ns()
        generators.tell_all("go")
        clients = generators.results()
        cpu_ns, busiest_ns = cpu_spent(server, before)
    finally:
        generators.end()
    return RelayRun(rate, seconds, clients, cpu_ns, busiest_ns)


# --- 2. idle WSS clients: memory per connection ----------------------------------------------


@dataclass
class IdleRun:
    server: str
    transport: str              # "wss" or "ws"
    clients: int
    registered: int = 0
    failed: int = 0
    memory_before: dict[str, int] = field(default_factory=dict)
    memory_after: dict[str, int] = field(default_factory=dict)
    shared_before: int | None = None
    shared_after: int | None = None
    pings: int = 0
    closed_by_server: int = 0
    hold_seconds: float = 0.0
    connect_seconds: float = 0.0
    open_files_limit: int = 0
    server_died: bool = False

    @property
    def complete(self) -> bool:
        """99 % of the clients registered and the server lived: only then is a figure per connection given
        (divided by the connections actually held)."""
        return self.registered >= 0.99 * self.clients and not self.server_died

    def per_connection(self, kind: str) -> float:
        """Bytes per registered connection: the growth of `kind` (rss, pss) over the idle server's."""
        if not self.complete:
            return math.nan
        return (self.memory_after[kind] - self.memory_before[kind]) / self.registered

    @property
    def shared_per_connection(self) -> float | None:
        if self.shared_before is None or self.shared_after is None or not self.complete:
            return None
        return (self.shared_after - self.shared_before) / self.registered


def idle_run(server, transport: str, clients: int, processes: int, concurrency: int, first_user: int,
             hold: float) -> IdleRun:
    """`clients` WSS (or WS) clients register and stay `hold` seconds (pings on); memory before and after."""
    pids = process_ids(server)
    run = IdleRun(server.name, transport, clients, memory_before=server.memory(), shared_before=server.shared_memory_used(),
                  open_files_limit=server.open_files_limit())
    arguments, first = [], first_user
    for share in spread(clients, processes):
        arguments.append(["--first", str(first), "--clients", str(share), "--concurrency", str(concurrency)])
        first += share
    began = time.monotonic()
    generators = Generators("idle", server.wss_url if transport == "wss" else server.ws_url, arguments)
    try:
        ready = [json.loads(line) for line in generators.read_all()]
        run.connect_seconds = time.monotonic() - began
        run.registered = sum(r["ready"] for r in ready)
        run.failed = sum(r["failed"] for r in ready)
        time.sleep(SETTLE_SECONDS)
        run.memory_after, run.shared_after = server.memory(), server.shared_memory_used()
        # Hold past one ping interval: the pings must be answered and no connection dropped.
        time.sleep(max(0.0, hold - SETTLE_SECONDS))
        run.hold_seconds = time.monotonic() - began - run.connect_seconds
        generators.tell_all("stop")
        ended = generators.results()
    finally:
        generators.end()
    run.server_died = died(server, pids)
    run.pings = sum(r["pings"] for r in ended)
    run.closed_by_server = sum(r["closed_by_server"] for r in ended)
    return run


# --- 3. new TLS handshakes per second ----------------------------------------------------------------


@dataclass
class HandshakeRun:
    server: str
    seconds: float
    clients: list[dict]
    cpu_ns: int
    server_died: bool = False

    @property
    def completed(self) -> int:
        return sum(c["completed"] for c in self.clients)

    @property
    def failed(self) -> int:
        return sum(c["failed"] for c in self.clients)

    @property
    def per_second(self) -> float:
        wall = max(c["seconds"] for c in self.clients)
        return self.completed / wall if wall else math.nan

    @property
    def cpu_us_per_handshake(self) -> float:
        return self.cpu_ns / 1000 / self.completed if self.completed else math.nan

    @property
    def generator_load(self) -> float:
        return max(c["cpu_seconds"] / c["seconds"] for c in self.clients)

    @property
    def tls(self) -> str:
        return ", ".join(sorted({version for c in self.clients for version in c["tls"]}))


def handshake_run(server, seconds: float, processes: int, concurrency: int) -> HandshakeRun:
    generators = Generators("handshakes", server.tls_url,
                            [["--seconds", str(seconds), "--concurrency", str(concurrency)]] * processes)
    before, pids = server.cpu_ns(), process_ids(server)
    try:
        clients = generators.results()
    finally:
        generators.end()
    cpu_ns, _ = cpu_spent(server, before)
    return HandshakeRun(server.name, seconds, clients, cpu_ns, server_died=died(server, pids))


def raise_open_files_limit() -> int:
    """The soft descriptor limit of this process (and its clients) up to the hard one; the new soft limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
