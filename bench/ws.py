"""`make bench-ws`: oversipd's WebSocket and TLS transports next to Kamailio's websocket and tls modules.

Tables (the servers take turns run by run, in one run of the harness):

* relay:      SIP MESSAGE between WebSocket clients, A → server → B and B's
              200 back, the highest MESSAGE/s with 0 failed (bench-sip's
              rate search), and server CPU µs per MESSAGE;
* idle:       `--idle-clients` WSS clients registered and idle, pings on:
              memory per connection (RSS and PSS of every server process,
              Kamailio's shared memory in use);
* handshakes: new TLS connections per second (no session reuse), one
              OPTIONS each, and server CPU µs per handshake.

    python -m bench.ws [--cases relay,idle,handshakes] [--duration 5] [--rounds 2] ...
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .sip import Bench, Case, add_common_options, in_turn, log, names, write_section
from .sip_servers import ServerError, SipServer
from .ws_report import render
from .ws_runs import HandshakeRun, IdleRun, handshake_run, idle_run, raise_open_files_limit, relay_run
from .ws_servers import KamailioWs, OversipdWs, make_certificate

DEFAULT_BASE_PORT = 25500
SECTION = "bench-ws"
RELAY = Case("relay", "ws", "ws", "SIP MESSAGE relayed between WebSocket clients", "MESSAGE/s", 2, 500)
CASES = ("relay", "idle", "handshakes")
USERS_PER_RUN = 100_000     # each run registers users of its own: no binding of an earlier run is forked to


class RelayBench(Bench):
    """bench/sip.py's rate search and turn taking, with WebSocket client processes as the load."""

    def run(self, server: SipServer, case: Case, rate: float, seconds: float):
        self.run_number += 1
        result = relay_run(server, rate, seconds, self.args.pairs, self.args.generators,
                           self.run_number * USERS_PER_RUN)
        return self.checked(server, f"{server.name:<9} relay {rate:>8g}/s {seconds:g} s", result,
                            f"{result.cpu_us_per_message:.1f} µs/MESSAGE, "
                            f"busiest client process {result.generator_load:.0%}")


def taking_turns(servers: list[SipServer], rounds: int):
    """(round, server) in the order oversipd, Kamailio, Kamailio, oversipd, ...: each goes first as often."""
    for turn in range(rounds):
        for server in in_turn(servers, turn):
            yield turn, server


def idle_table(servers: list[SipServer], args: argparse.Namespace) -> list[IdleRun]:
    runs = []
    for transport, clients in args.idle:
        for turn, server in taking_turns(servers, args.rounds):
            server.restart()
            runs.append(idle_run(server, transport, clients, args.idle_generators, args.idle_concurrency,
                                 (turn + 1) * USERS_PER_RUN, args.idle_hold))
            log_idle(runs[-1])
    return runs


def log_idle(run: IdleRun) -> None:
    log(f"  {run.server:<9} idle {run.transport} {run.registered}/{run.clients} registered in "
        f"{run.connect_seconds:.1f} s "
            f"({run.failed} failed): {run.per_connection('rss') / 1024:.1f} KiB RSS, "
            f"{run.per_connection('pss') / 1024:.1f} KiB PSS per connection, {run.pings} pings, "
        f"{run.closed_by_server} closed by the server{', the server DIED' if run.server_died else ''}")


def handshake_table(servers: list[SipServer], args: argparse.Namespace) -> list[HandshakeRun]:
    runs = []
    for server in servers:
        server.restart()
    for _, server in taking_turns(servers, args.rounds):
        if any(run.server_died for run in runs[-len(servers):] if run.server == server.name):
            server.restart()      # Kamailio 5.6.3's tls module can crash under load (see bench/README.md)
        run = handshake_run(server, args.duration, args.generators, args.handshake_concurrency)
        log(f"  {server.name:<9} handshakes {run.per_second:.0f}/s ({run.failed} failed), "
            f"{run.cpu_us_per_handshake:.0f} µs CPU each, {run.tls}, busiest client process "
            f"{run.generator_load:.0%}{', the server DIED' if run.server_died else ''}")
        runs.append(run)
    return runs


def make_servers(args: argparse.Namespace, workdir: Path) -> list[SipServer]:
    certificate = make_certificate(workdir / "tls")
    servers: list[SipServer] = []
    if "oversipd" in args.servers:
        servers.append(OversipdWs("oversipd", args.base_port, workdir / "oversipd", args.oversipd,
                                  args.workers, certificate))
    if "kamailio" in args.servers:
        servers.append(KamailioWs("kamailio", args.base_port + 10, workdir / "kamailio", certificate))
    return servers


def idle_cases(value: str) -> list[tuple[str, int]]:
    """"wss:1000,ws:10000" -> [("wss", 1000), ("ws", 10000)]."""
    cases = []
    for item in names(value):
        transport, _, clients = item.partition(":")
        if transport not in ("ws", "wss") or not clients.isdigit() or int(clients) < 1:
            raise argparse.ArgumentTypeError(f"expected TRANSPORT:CLIENTS with ws or wss, got {item!r}")
        cases.append((transport, int(clients)))
    return cases


def interrupted(signum: int, frame: object) -> None:
    raise SystemExit(f"bench-ws: interrupted by {signal.Signals(signum).name}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ws", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", type=names, default=list(CASES), help="tables to make: " + ", ".join(CASES))
    parser.add_argument("--servers", type=lambda v: set(names(v)), default={"oversipd", "kamailio"},
                        help="oversipd, kamailio")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of each sustained relay run and of each handshakes run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per server of every table (medians)")
    parser.add_argument("--probe-duration", type=float, default=2.0, help="seconds of each relay search probe")
    parser.add_argument("--warmup", type=float, default=1.0, help="relay: seconds at the start rate after a start")
    parser.add_argument("--start-rate", type=float, default=0.0, help="relay: first probe's rate (500/s)")
    parser.add_argument("--max-rate", type=float, default=20000.0, help="relay: highest rate probed")
    parser.add_argument("--pairs", type=int, default=20, help="relay: WebSocket client pairs")
    parser.add_argument("--generators", type=int, default=2, help="client processes (relay, handshakes)")
    parser.add_argument("--idle", type=idle_cases, default=idle_cases("wss:1000,wss:10000,ws:10000"),
                        help="idle: TRANSPORT:CLIENTS held at once, each a table row per server")
    parser.add_argument("--idle-generators", type=int, default=4, help="idle: client processes")
    parser.add_argument("--idle-concurrency", type=int, default=10,
                        help="idle: connections opened at once per client process")
    parser.add_argument("--idle-hold", type=float, default=35.0,
                        help="idle: seconds the clients stay (past one 30 s ping interval)")
    parser.add_argument("--handshake-concurrency", type=int, default=16, help="handshakes: loops per process")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help="oversipd on 3 loopback ports from here, Kamailio on 3 from here + 10")
    add_common_options(parser, SECTION)
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(CASES)})")
    if shutil.which("kamailio") is None and "kamailio" in args.servers:
        parser.error("kamailio is not installed: `make bench-ws` installs it with its websocket and tls modules")
    return args


def as_json(results: dict) -> dict:
    relay = {name: {"rate": s.rate, "cpu_us_per_message": s.cpu_us_per_message, "gave_up": s.gave_up,
                    "runs": [r.as_json() for r in s.probes + s.sustained + s.same_rate_runs]}
             for name, s in results.get("relay", {}).items()}
    return {"relay": relay, "idle": [vars(r) for r in results.get("idle", [])],
            "handshakes": [vars(r) for r in results.get("handshakes", [])]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["python", "-m", "bench.ws", *argv])
    began, load_before = time.monotonic(), os.getloadavg()
    files_limit = raise_open_files_limit()   # the servers and the clients inherit it
    most = max(clients for _, clients in args.idle)
    if "idle" in args.cases and files_limit < most + 1000:
        raise SystemExit(f"bench-ws: the descriptor limit is {files_limit}, too low for "
                         f"{most} connections; raise the hard limit (ulimit -Hn)")
    workdir = Path(tempfile.mkdtemp(prefix="ovs-bench-ws-"))
    os.chmod(workdir, 0o755)
    results: dict = {}
    servers: list[SipServer] = []
    try:
        servers = make_servers(args, workdir)
        if "relay" in args.cases:
            log(f"bench-ws: {RELAY.title}: {', '.join(s.name for s in servers)}")
            results["relay"] = RelayBench(args, workdir / "relay").search(servers, RELAY)
        if "idle" in args.cases:
            log("bench-ws: idle clients, " + ", ".join(f"{n} over {t}" for t, n in args.idle))
            results["idle"] = idle_table(servers, args)
        if "handshakes" in args.cases:
            log("bench-ws: new TLS handshakes per second")
            results["handshakes"] = handshake_table(servers, args)
    except ServerError as error:
        raise SystemExit(f"bench-ws: {error}") from None
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            log(f"bench-ws: run directories kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(results, args, command, time.monotonic() - began, load_before, files_limit)
    print(report)
    if args.write:
        write_section(args.write, report, SECTION)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(as_json(results), indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
