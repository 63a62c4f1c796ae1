"""`make bench-sip`: oversipd next to Kamailio, SIPp as the client, in the same run.

Tables (each a rate search per server, the servers taking turns probe by probe):

* options:   OPTIONS/s over UDP answered 200 (oversipd's server script; Kamailio's
             stateless sl_send_reply), the highest rate with 0 failed requests;
* proxy-udp, proxy-tcp: calls/s (INVITE/180/200/ACK/BYE/200) through a
             transaction-stateful record-routing proxy, SIPp UAC → proxy → SIPp UAS.

Beside each rate: the server's CPU time per SIP message it received, from
/proc/PID/schedstat summed over all its processes, and the UDP
RcvbufErrors of the machine during the sustained runs.  Kamailio runs with
Debian's default allocator and with -x tlsf.

    python -m bench.sip [--cases options,proxy-udp,proxy-tcp] [--duration 10] [--rounds 3] ...
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from .report import cpu_model
from .sip_search import Run, Search
from .sip_servers import (OVERSIPD_CONF_TEMPLATE, OVERSIPD_OPTIONS_SCRIPT, OVERSIPD_PROXY_CONF_TEMPLATE,
                          OVERSIPD_PROXY_SCRIPT, HOST, Kamailio, Oversipd,
                          ServerError, SipServer, port_free)
from .sipp_client import OPTIONS_UAC, PROXY_UAC, SippCounts, Uas, run_uac, udp_rcvbuf_errors

DEFAULT_BASE_PORT = 23000
SECTION = "bench-sip"
QUIET_LOAD = 0.3          # a 1-minute load average above this before the run: the figures are noisy
T = TypeVar("T")


@dataclass(frozen=True)
class Case:
    key: str
    role: str                 # the server's job: "options" or "proxy"
    transport: str
    title: str
    unit: str
    messages_per_call: int    # SIP messages the server receives per completed call
    start_rate: float


CASES = {
    "options": Case("options", "options", "udp", "OPTIONS over UDP answered 200", "OPTIONS/s", 1, 1000),
    # INVITE, ACK, BYE from the UAC; 180, 200, 200 from the UAS.
    "proxy-udp": Case("proxy-udp", "proxy", "udp", "calls through a stateful proxy, UDP", "calls/s", 6, 200),
    "proxy-tcp": Case("proxy-tcp", "proxy", "tcp", "calls through a stateful proxy, TCP", "calls/s", 6, 200),
    # The caller from a UDP socket per call, as many phones are: over one socket (proxy-udp, a
    # trunk) SO_REUSEPORT gives oversipd's whole load to one worker (issue 23).
    "proxy-udp-phones": Case("proxy-udp-phones", "proxy", "udp-per-call",
                             "calls through a stateful proxy, UDP, a socket per call", "calls/s", 6, 200),
}


class Ports:
    """Loopback ports from --base-port: 10 for the servers, then the UAS's, then the UAC's, in turn."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.uas_ports = itertools.cycle(range(base + 10, base + 50))
        self.uac_ports = itertools.cycle(range(base + 50, base + 200))

    def server(self, index: int) -> int:
        return self.base + index

    def next_free(self, ports: itertools.cycle) -> int:
        for _ in range(200):
            port = next(ports)
            if port_free(port):
                return port
        raise SystemExit(f"bench-sip: no free port in {self.base}-{self.base + 199}")


def wait_bound(port: int, uas: Uas, timeout: float = 10.0) -> None:
    """Until the UAS holds its port: then the UAC's first INVITE finds it."""
    deadline = time.monotonic() + timeout
    while port_free(port):
        if not uas.running() or time.monotonic() > deadline:
            raise SystemExit(f"bench-sip: the SIPp UAS did not bind port {port}; see {uas.rundir / 'uas.out'}")
        time.sleep(0.01)


def in_turn(servers: list, turn: int) -> list:
    """The servers in the order of `turn`: A B, B A, ... so that each goes first as often."""
    shift = turn % len(servers)
    return servers[shift:] + servers[:shift]


def measured(server: SipServer, action: Callable[[], T]) -> tuple[T, list[int], int]:
    """What `action` returns, the CPU ns each server process spent meanwhile, and the RcvbufErrors."""
    cpu_before, rcvbuf_before = server.cpu_ns(), udp_rcvbuf_errors()
    result = action()
    cpu_after, rcvbuf_after = server.cpu_ns(), udp_rcvbuf_errors()
    # A process that appeared during the run (a late child, a respawned worker) spent all
    # its CPU time in it; one that ended took its time along (and is not counted).
    return result, [after - cpu_before.get(pid, 0) for pid, after in cpu_after.items()], rcvbuf_after - rcvbuf_before


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.ports = Ports(args.base_port)
        self.run_number = 0

    def rundir(self, server: SipServer) -> Path:
        self.run_number += 1
        path = self.workdir / "runs" / f"{self.run_number:04d}-{server.name}"
        path.mkdir(parents=True)
        return path

    def run(self, server: SipServer, case: Case, rate: float, seconds: float) -> Run:
        """One SIPp run at `rate` for `seconds`; the server's CPU and the RcvbufErrors around it."""
        calls = max(1, round(rate * seconds))
        uac, uas_counts, spent, rcvbuf_errors = self.drive(server, case, rate, calls, self.rundir(server))
        result = Run(rate, seconds, calls, uac, uas_counts, sum(spent),
                     rcvbuf_errors, case.messages_per_call, max(spent, default=0))
        return self.checked(server, f"{server.name:<15} {case.key:<9} {rate:>8g}/s {seconds:g} s", result,
                            f"{result.cpu_us_per_message:.1f} µs/msg, RcvbufErrors +{result.rcvbuf_errors}")

    def drive(self, server: SipServer, case: Case, rate: float, calls: int,
              rundir: Path) -> tuple[SippCounts, SippCounts | None, list[int], int]:
        """The SIPp traffic of one run: (UAC's counts, UAS's or None, CPU ns of each server process, RcvbufErrors)."""
        uas = None
        target = f"{HOST}:{server.port}"
        send_to = None
        try:
            if case.role == "proxy":
                uas_port = self.ports.next_free(self.ports.uas_ports)
                uas = Uas("udp" if case.transport == "udp-per-call" else case.transport, uas_port, calls, rundir)
                wait_bound(uas_port, uas)
                target, send_to = f"{HOST}:{uas_port}", f"{HOST}:{server.port}"
            scenario = PROXY_UAC if case.role == "proxy" else OPTIONS_UAC
            uac_port = self.ports.next_free(self.ports.uac_ports)
            (uac, uas_counts), spent, rcvbuf_errors = measured(server, lambda: (
                run_uac(scenario, case.transport, uac_port, target, rate, calls, rundir, send_to),
                uas.finish() if uas else None))
        finally:
            if uas is not None:
                uas.end()
        return uac, uas_counts, spent, rcvbuf_errors

    @staticmethod
    def checked(server: SipServer, what: str, result, figures: str):
        """`result`, logged; the whole bench ends if the server died in its run."""
        verdict = "ok" if result.ok else f"FAILED ({result.failure})"
        log(f"  {what}: {verdict}, {figures}")
        if not server.alive():
            raise SystemExit(f"bench: {server.name} died during a run; see {server.workdir / 'server.log'}")
        return result

    def fresh_start(self, server: SipServer, case: Case) -> None:
        """(Re)start a server and warm it up: a cold server fails below what a warm one holds."""
        server.restart()
        self.after_start(server, case)
        if self.args.warmup > 0:
            self.run(server, case, self.start_rate(case), self.args.warmup)

    def after_start(self, server: SipServer, case: Case) -> None:
        """What a server needs after each (re)start, before its warm-up (bench/register.py's registrations)."""

    def start_rate(self, case: Case) -> float:
        return self.args.start_rate or case.start_rate

    def search(self, servers: list[SipServer], case: Case) -> dict[str, Search]:
        """The rate search of every server for one case, the servers taking turns run by run."""
        searches = {s.name: Search(start_rate=self.start_rate(case), max_rate=self.args.max_rate,
                                   probe_seconds=self.args.probe_duration, duration=self.args.duration,
                                   rounds=self.args.rounds) for s in servers}
        for server in servers:
            self.fresh_start(server, case)
        for turn in itertools.count():
            pending = [(s, searches[s.name]) for s in in_turn(servers, turn)
                       if searches[s.name].next_run() is not None]
            if not pending:
                self.same_rate(servers, case, searches)
                return searches
            for server, search in pending:
                step = search.next_run()
                if step is None:
                    continue
                result = self.run(server, case, *step)
                search.record(result)
                if not result.ok:
                    # Transactions left by an overloaded run would retransmit into the next.
                    self.fresh_start(server, case)
        raise AssertionError("unreachable")

    def same_rate(self, servers: list[SipServer], case: Case, searches: dict[str, Search]) -> None:
        """CPU per message of every server at one rate, the lowest they all held: a server's fixed
        costs (timers, idle wake-ups) weigh less per message at a higher rate, so CPU figures taken
        at each one's own highest rate would favour the faster one."""
        rates = [s.rate for s in searches.values() if s.rate]
        if len(rates) < 2:
            return
        common = min(rates)
        for search in searches.values():
            search.same_rate = common
            if search.rate == common:
                search.same_rate_runs = list(search.sustained)
        for turn in range(self.args.rounds):
            for server in in_turn(servers, turn):
                search = searches[server.name]
                if search.rate and search.rate != common:
                    result = self.run(server, case, common, self.args.duration)
                    search.same_rate_runs.append(result)
                    if not result.ok:
                        self.fresh_start(server, case)


# --- the servers ----------------------------------------------------------------


def kamailio_servers(role: str, ports: Ports, first: int, workdir: Path, wanted: set[str]) -> list[SipServer]:
    servers: list[SipServer] = []
    kinds = (("kamailio", "", False), ("kamailio-tlsf", "tlsf", False), ("kamailio-kemi", "", True))
    for index, (name, allocator, kemi) in enumerate(kinds):
        if name in wanted:
            servers.append(Kamailio(name, role, ports.server(first + index), workdir / f"{role}-{name}", allocator,
                                    kemi=kemi))
    return servers


def oversipd_skip_reason(args: argparse.Namespace, role: str, workdir: Path) -> str:
    """Why oversipd cannot take part in this role's table ("" if it can)."""
    if "oversipd" not in args.servers:
        return "not asked for (--servers)"
    if role == "proxy" and args.oversipd_proxy_script is None:
        return "no proxy server script (--oversipd-proxy-script)"
    if not args.oversipd.exists():
        return f"no oversipd at {args.oversipd}"
    # `oversipd check` on the bench config tells whether this oversipd speaks SIP.
    probe = oversipd_server(args, role, Ports(args.base_port), workdir / "check")
    probe.workdir.mkdir(parents=True)
    probe.prepare()
    check = subprocess.run([str(args.oversipd), "check", "-c", str(probe.workdir / "oversipd.conf")],
                           capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip() or check.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        return f"`oversipd check` refuses the bench config, so this oversipd speaks no SIP yet: {last[0]}"
    return ""


def oversipd_server(args: argparse.Namespace, role: str, ports: Ports, workdir: Path) -> Oversipd:
    if role == "proxy":
        return Oversipd("oversipd", role, ports.server(4), workdir, args.oversipd, args.workers,
                        args.oversipd_proxy_script, args.oversipd_proxy_conf)
    return Oversipd("oversipd", role, ports.server(0), workdir, args.oversipd, args.workers,
                    args.oversipd_options_script, OVERSIPD_CONF_TEMPLATE)


def servers_for(args: argparse.Namespace, role: str, ports: Ports, workdir: Path,
                skipped: dict[str, str]) -> list[SipServer]:
    first = 1 if role == "options" else 5
    servers = kamailio_servers(role, ports, first, workdir, args.servers)
    reason = oversipd_skip_reason(args, role, workdir / f"{role}-oversipd")
    if reason:
        skipped[role] = reason
        log(f"bench-sip: oversipd skipped in the {role} table: {reason}")
    else:
        servers.insert(0, oversipd_server(args, role, ports, workdir / f"{role}-oversipd"))
    return servers


# --- the report -------------------------------------------------------------------


def number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def percent(share: float | None) -> str:
    return "" if share is None or math.isnan(share) else f"{share:.0%}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}"


def display_name(name: str, args: argparse.Namespace) -> str:
    return {"oversipd": f"oversipd, {args.workers} workers",
            "kamailio": "Kamailio, Debian's default allocator (qm)",
            "kamailio-tlsf": "Kamailio, -x tlsf",
            "kamailio-kemi": "Kamailio, routes in Python (KEMI, app_python3)"}[name]


def table(case: Case, searches: dict[str, Search], args: argparse.Namespace, skipped: str) -> str:
    ours = searches.get("oversipd")
    same = next((s.same_rate for s in searches.values() if s.same_rate), None)
    at_same = f"at {same:g}/s, every server" if same else "at a rate every server held"
    lines = [f"### {case.title}", "",
             f"| server | {case.unit}, 0 failed, {args.rounds} × {args.duration:g} s | CPU µs/msg at that rate "
             f"| CPU µs/msg {at_same} | oversipd ÷ this: rate | oversipd ÷ this: CPU/msg {at_same} "
             f"| busiest process's share of the CPU | retransmissions | RcvbufErrors | what failed just above it |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, search in searches.items():
        other = name != "oversipd" and ours is not None
        limit = search.gave_up or search.limit or f"nothing up to --max-rate {args.max_rate:g}"
        lines.append(f"| {display_name(name, args)} | {number(search.rate)} | {number(search.cpu_us_per_message, 1)} "
                     f"| {number(search.same_rate_cpu, 1)} "
                     f"| {ratio(ours.rate, search.rate) if other else ''} "
                     f"| {ratio(ours.same_rate_cpu, search.same_rate_cpu) if other else ''} "
                     f"| {percent(search.busiest_share)} "
                     f"| {search.retransmissions} | {search.rcvbuf_errors} | {limit} |")
    lines += ["", "Target (issues 10 and 11): oversipd's rate ≥ 1.0 × Kamailio's with Debian's default allocator."]
    if skipped:
        lines += ["", f"oversipd: skipped — {skipped}."]
    return "\n".join(lines)


def tool_version(command: list[str], marker: str) -> str:
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return next((line.strip() for line in output.splitlines() if marker in line), "unknown")


def machine_facts(args: argparse.Namespace, load_before: tuple[float, ...]) -> list[str]:
    """The machine, the versions of the programs measured, and the load around the run."""
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; kernel {platform.release()}; "
        f"Python {sys.version.split()[0]}",
        f"{tool_version([str(args.oversipd), '--version'], 'oversipd')} ({args.oversipd}); "
        f"{tool_version(['kamailio', '-v'], 'version:').removeprefix('version: ')}; "
        f"SIPp {tool_version(['sipp', '-v'], 'SIPp v').removeprefix('SIPp ')}",
        "load average (1/5/15 min) before: " + " ".join(f"{x:.2f}" for x in load_before)
        + "; after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]


def render(tables: list[str], args: argparse.Namespace, command: str, seconds: float,
           load_before: tuple[float, ...]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    noisy = load_before[0] > QUIET_LOAD
    facts = machine_facts(args, load_before)
    return "\n".join([
        "## SIP: oversipd next to Kamailio (`make bench-sip`)",
        "",
        f"Made by `{command}` on {when} in {seconds:.0f} s: probes of {args.probe_duration:g} s, "
        f"then {args.rounds} sustained runs of {args.duration:g} s at the rate found; the servers take turns "
        "run by run.",
        *([f"**Noisy: the machine was not quiet (load {load_before[0]:.2f} before the run); "
           "these figures only show that the harness works.**"] if noisy else []),
        "",
        *[f"* {fact}" for fact in facts],
        "",
        *[t + "\n" for t in tables],
        "How: a SIPp UAC at a fixed rate (`bench/sipp/`); for the proxy, SIPp UAC → proxy → SIPp UAS with "
        "scenarios that follow Record-Route and tolerate a late or missing 180 and a late ACK. A rate counts "
        "when every call of the run completed, none failed on either SIPp, and the run ended within 5 % + 0.25 s "
        "of its planned length (no calls queued up, SIPp kept the pace). The search doubles from a low rate until a probe fails, bisects to 10 %, then needs every "
        "sustained run to pass (a failure backs off 10 % and starts the rounds over); after a failed run the "
        "server is restarted and warmed up, as transactions left by an overloaded run would retransmit into "
        "the next. CPU: `/proc/PID/schedstat` of the server's master and every child, per SIP message it "
        "received (1 per OPTIONS; 6 per call: INVITE, ACK, BYE, 180, 200, 200) plus SIPp's "
        "retransmissions; the median of the sustained runs at that server's own highest rate, and of "
        "`--rounds` runs of every server at the lowest of those rates (a server's fixed costs weigh less per "
        "message at a higher rate, so only the latter compares servers; oversipd's CPU ratio uses it). "
        "RcvbufErrors: the Udp line of /proc/net/snmp, machine-wide, summed over the sustained runs. "
        "See `bench/README.md`.",
    ])


def write_section(path: Path, body: str, section: str = SECTION) -> None:
    from .markdown import replace_section
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    path.write_text(replace_section(text, section, body))


# --- the command line ---------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interrupted(signum: int, frame: object) -> None:
    raise SystemExit(f"bench-sip: interrupted by {signal.Signals(signum).name}")


def names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_common_options(parser: argparse.ArgumentParser, section: str) -> None:
    """The options of every bench that runs oversipd next to Kamailio (bench-sip, bench-ws)."""
    parser.add_argument("--workers", type=int, default=2, help="oversipd's workers")
    parser.add_argument("--oversipd", type=Path, default=Path(sys.executable).parent / "oversipd",
                        help="the oversipd command (default: this Python's)")
    parser.add_argument("--write", type=Path, metavar="MARKDOWN",
                        help=f"also put the report in this file, as its `{section}` section")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every run as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (configs, logs, statistics)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sip", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", type=names, default=list(CASES), help="tables to make: " + ", ".join(CASES))
    parser.add_argument("--servers", type=lambda v: set(names(v)), default={"oversipd", "kamailio", "kamailio-kemi"},
                        help="oversipd, kamailio, kamailio-tlsf, kamailio-kemi")
    parser.add_argument("--oversipd-options-script", type=Path, default=OVERSIPD_OPTIONS_SCRIPT,
                        help="server script that answers OPTIONS 200")
    parser.add_argument("--oversipd-proxy-script", type=Path, default=OVERSIPD_PROXY_SCRIPT,
                        help="server script that proxies every request (OverSIP's default routing)")
    parser.add_argument("--oversipd-proxy-conf", type=Path, default=OVERSIPD_PROXY_CONF_TEMPLATE,
                        help="config template for oversipd as a proxy (@PORT@, @WORKERS@, @SCRIPT@ filled in)")
    add_search_options(parser, SECTION, DEFAULT_BASE_PORT)
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(CASES)})")
    checked_tools(parser, "make bench-sip")
    return args


def add_search_options(parser: argparse.ArgumentParser, section: str, base_port: int) -> None:
    """The options of a rate search of servers side by side (bench/sip.py, bench/register.py)."""
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each sustained run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="sustained runs at the rate found, and at the table's common rate, per server")
    parser.add_argument("--probe-duration", type=float, default=2.0, help="seconds of each search probe")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds at the start rate after each (re)start")
    parser.add_argument("--start-rate", type=float, default=0.0,
                        help="first probe's rate (default: each table's own)")
    parser.add_argument("--max-rate", type=float, default=30000.0, help="highest rate probed")
    parser.add_argument("--base-port", type=int, default=base_port, help="200 loopback ports from here")
    add_common_options(parser, section)


def checked_tools(parser: argparse.ArgumentParser, target: str) -> None:
    for tool in ("sipp", "kamailio"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed: `{target}` installs it (Debian's sip-tester, kamailio)")


def as_json(results: dict[str, dict[str, Search]]) -> dict:
    def run(r: Run) -> dict:
        return {"rate": r.rate, "seconds": r.seconds, "calls": r.calls, "ok": r.ok, "failure": r.failure,
                "cpu_us_per_message": r.cpu_us_per_message, "messages": r.messages, "cpu_ns": r.cpu_ns,
                "busiest_share": r.busiest_share,
                "rcvbuf_errors": r.rcvbuf_errors, "uac": vars(r.uac), "uas": vars(r.uas) if r.uas else None}
    return {case: {name: {"rate": s.rate, "cpu_us_per_message": s.cpu_us_per_message, "gave_up": s.gave_up,
                          "probes": [run(r) for r in s.probes], "sustained": [run(r) for r in s.sustained],
                          "same_rate": s.same_rate, "same_rate_runs": [run(r) for r in s.same_rate_runs]}
                   for name, s in searches.items()} for case, searches in results.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # TERM (and ^C) end the run through the `finally` blocks that stop every server.
    signal.signal(signal.SIGTERM, interrupted)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["python", "-m", "bench.sip", *argv])
    began, load_before = time.monotonic(), os.getloadavg()
    results: dict[str, dict[str, Search]] = {}
    skipped: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="ovs-bench-sip-"))
    os.chmod(workdir, 0o755)
    try:
        for role in ("options", "proxy"):
            cases = [CASES[c] for c in args.cases if CASES[c].role == role]
            if not cases:
                continue
            servers = servers_for(args, role, Ports(args.base_port), workdir, skipped)
            bench = Bench(args, workdir / role)
            try:
                for case in cases:
                    log(f"bench-sip: {case.title}: {', '.join(s.name for s in servers)}")
                    results[case.key] = bench.search(servers, case)
            finally:
                for server in servers:
                    server.stop()
    except ServerError as error:
        raise SystemExit(f"bench-sip: {error}") from None
    finally:
        if args.keep:
            log(f"bench-sip: run directories kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    tables = [table(CASES[key], searches, args, skipped.get(CASES[key].role, ""))
              for key, searches in results.items()]
    report = render(tables, args, command, time.monotonic() - began, load_before)
    publish(report, results, args, SECTION)
    return 0


def publish(report: str, results: dict[str, dict[str, Search]], args: argparse.Namespace, section: str) -> None:
    """The report on stdout, and in --write's section and --json's file when asked."""
    print(report)
    if args.write:
        write_section(args.write, report, section)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(as_json(results), indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
