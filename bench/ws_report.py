"""The `bench-ws` section of docs/BENCHMARKS.md: bench/ws.py's three tables, medians of the runs."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
from typing import Callable, Iterable

from .report import cpu_model
from .sip import QUIET_LOAD, number, ratio, tool_version
from .sip_search import Search
from .ws_runs import HandshakeRun, IdleRun
from .ws_servers import CERTIFICATE_KIND

KIB = 1024


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def display_name(name: str, args: argparse.Namespace) -> str:
    return {"oversipd": f"oversipd, {args.workers} workers",
            "kamailio": "Kamailio, 2 TCP children (websocket, xhttp, tls)"}[name]


def relay_table(searches: dict[str, Search], args: argparse.Namespace) -> str:
    ours = searches.get("oversipd")
    same = next((s.same_rate for s in searches.values() if s.same_rate), None)
    at_same = f"at {same:g}/s, both" if same else "at a rate both held"
    lines = ["### SIP MESSAGE relayed between WebSocket clients", "",
             f"| server | MESSAGE/s, 0 failed, {args.rounds} × {args.duration:g} s | CPU µs/MESSAGE at that rate "
             f"| CPU µs/MESSAGE {at_same} | oversipd ÷ this: rate | this ÷ oversipd: CPU/MESSAGE "
             f"| busiest client process (share of a core) | p99 latency | what failed just above it |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, search in searches.items():
        other = name != "oversipd" and ours is not None
        limit = search.gave_up or search.limit or f"nothing up to --max-rate {args.max_rate:g}"
        load = median(r.generator_load for r in search.sustained)
        p99 = median(r.latency_p99 for r in search.sustained)
        lines.append(f"| {display_name(name, args)} | {number(search.rate)} | {number(search.cpu_us_per_message, 1)} "
                     f"| {number(search.same_rate_cpu, 1)} "
                     f"| {ratio(ours.rate, search.rate) if other else ''} "
                     f"| {ratio(search.same_rate_cpu, ours.same_rate_cpu) if other else ''} "
                     f"| {'' if load is None else f'{load:.0%}'} "
                     f"| {'—' if p99 is None else f'{p99 * 1000:.1f} ms'} | {limit} |")
    lines += ["", "Target (issue 19): oversipd's rate ≥ 1.0 × Kamailio's."]
    return "\n".join(lines)


def by_server(runs: list, name: str) -> list:
    return [run for run in runs if run.server == name]


def idle_row(mine: list[IdleRun], args: argparse.Namespace) -> str:
    def kib(value: Callable[[IdleRun], float | None]) -> str:
        found = median(value(run) for run in mine)
        return "—" if found is None else f"{found / KIB:.1f} KiB"

    before = median(run.memory_before["rss"] for run in mine) or 0
    after = median(run.memory_after.get("rss") for run in mine) or 0
    died = sum(run.server_died for run in mine)
    return (f"| {mine[0].transport} × {mine[0].clients} | {display_name(mine[0].server, args)} "
            f"| {median(r.registered for r in mine):.0f} ({sum(r.failed for r in mine)}){' **died**' * bool(died)} "
            f"| {kib(lambda r: r.per_connection('rss'))} | {kib(lambda r: r.per_connection('pss'))} "
            f"| {kib(lambda r: r.shared_per_connection)} | {before / KIB / KIB:.0f} → {after / KIB / KIB:.0f} MiB "
            f"| {median(r.pings for r in mine):.0f} ({sum(r.closed_by_server for r in mine)}) "
            f"| {min(r.open_files_limit for r in mine)} |")


def idle_table(runs: list[IdleRun], args: argparse.Namespace) -> str:
    lines = [f"### Idle clients, registered, pings every 30 s, held {args.idle_hold:g} s", "",
             "| clients | server | registered, median (failed, all runs) | RSS per connection | PSS per connection "
             "| shared memory in use per connection | RSS, all processes, idle → loaded "
             "| pings answered, median (closed by the server, all runs) | descriptor limit |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[IdleRun]] = {}
    for run in runs:
        groups.setdefault((run.transport, run.clients, run.server), []).append(run)
    lines += [idle_row(mine, args) for mine in groups.values()]
    lines += ["", "Target (issue 19): oversipd's memory per connection ≤ Kamailio's. A figure per connection "
              "(divided by the connections held) is given only for runs where 99 % of the clients registered "
              "and the server lived; **died**: the server "
              "crashed in a run (its log is kept with `--keep`)."]
    return "\n".join(lines)


def handshake_table(runs: list[HandshakeRun], args: argparse.Namespace) -> str:
    lines = ["### New TLS handshakes per second (no session reuse), one OPTIONS each", "",
             f"| server | handshakes/s ({args.rounds} × {args.duration:g} s, median) | server CPU µs per handshake "
             "| failed | busiest client process (share of a core) | negotiated |",
             "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(run.server for run in runs):
        mine = by_server(runs, name)
        load = median(r.generator_load for r in mine)
        held = [r for r in mine if not r.server_died]    # a dead server's CPU left with its processes
        died = len(mine) - len(held)
        lines.append(f"| {display_name(name, args)} | {number(median(r.per_second for r in held))} "
                     f"| {number(median(r.cpu_us_per_handshake for r in held))} "
                     f"| {sum(r.failed for r in mine)}{f' **died in {died} run(s)**' if died else ''} "
                     f"| {'' if load is None else f'{load:.0%}'} | {mine[0].tls} |")
    return "\n".join(lines)


def render(results: dict, args: argparse.Namespace, command: str, seconds: float,
           load_before: tuple[float, ...], files_limit: int) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    noisy = load_before[0] > QUIET_LOAD
    facts = [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; kernel {platform.release()}; Python {sys.version}",
        f"{tool_version([str(args.oversipd), '--version'], 'oversipd')} ({args.oversipd}); "
        f"{tool_version(['kamailio', '-v'], 'version:').removeprefix('version: ')}",
        f"certificate: {CERTIFICATE_KIND}, the same file for both; clients: TLS 1.3 only, no session tickets",
        f"descriptor limit of the harness, its clients and the servers it starts: {files_limit}",
        "load average (1/5/15 min) before: " + " ".join(f"{x:.2f}" for x in load_before)
        + "; after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
    tables = []
    if "relay" in results:
        tables.append(relay_table(results["relay"], args))
    if "idle" in results:
        tables.append(idle_table(results["idle"], args))
    if "handshakes" in results:
        tables.append(handshake_table(results["handshakes"], args))
    return "\n".join([
        "## WebSocket and TLS: oversipd next to Kamailio (`make bench-ws`)",
        "",
        f"Made by `{command}` on {when} in {seconds:.0f} s; the servers take turns run by run "
        f"(oversipd, Kamailio, Kamailio, oversipd, …), {args.rounds} runs each, medians.",
        *([f"**Noisy: the machine was not quiet (load {load_before[0]:.2f} before the run); "
           "compare the servers with each other, not with other sections.**"] if noisy else []),
        "",
        *[f"* {fact}" for fact in facts],
        "",
        *[t + "\n" for t in tables],
        "How: the clients are `bench/ws_clients.py` processes (asyncio, `websockets`' sans-I/O ClientProtocol, "
        "SIP read and written with bytes operations), on the same 2 cores as the servers, neither pinned. "
        "**relay**: client pairs A, B open WebSockets and REGISTER (fresh users every run), then every A sends "
        "MESSAGEs to its B at a fixed rate in all; B answers 200, which the server relays back to A. A run counts "
        "when every MESSAGE got its 200, the last of them within 5 % + 0.25 s of the run's planned length "
        "(else MESSAGEs queued up: over WebSocket nothing is retransmitted, so an overloaded server shows as "
        "lag) and the clients kept the pace; the rate search is "
        "bench-sip's (doubling probes, bisection to 10 %, then every sustained run must pass). oversipd runs "
        "`bench/oversipd_ws.py` (its registrar, no authentication, SQLite location shared by the workers, "
        "`Proxy.route` to the bindings); Kamailio `bench/kamailio/ws.cfg` (registrar + usrloc in memory, "
        "nathelper's fix_nated_register / add_contact_alias for WebSocket clients, t_relay). CPU: "
        "`/proc/PID/schedstat` of every server process per MESSAGE relayed (a MESSAGE and its 200 in, both "
        "out); the busiest client process's share of a core says whether the clients were the limit. "
        "**idle**: WSS (or WS) clients connect `--idle-concurrency` at a time per client process, REGISTER, and stay past one ping "
        "interval; memory is read 2 s after the last one registered, less the server's own just before; RSS "
        "counts a page once per process that maps it (Kamailio's shared memory is mapped in every child), PSS "
        "shares it out, and Kamailio's shared memory in use is `kamcmd core.shmmem` real_used. "
        "**handshakes**: loops that each open a TLS connection (a new context per process, no tickets, so "
        "no resumption), send one OPTIONS, read the 200 and drop the connection. The clients spend CPU on the "
        "same cores, so the absolute rates are the machine's, the ratios the servers'. See `bench/README.md`.",
    ])
