#!/usr/bin/env python3
"""CPU µs per SIP message in one worker's core, in-process: a proxied call and a local OPTIONS.

One process plays a worker and its peers.  The worker is what
`oversipd.sip.service.WorkerSip` builds (SipCore, a UdpListener on a real
UDP socket, the ProxyEngine) running examples/proxy_server.py on its own
asyncio loop; a caller and a callee are plain UDP sockets of this process.
Each call is what bench/sipp/proxy-ua[cs].xml exchange through the proxy:
INVITE, 180, 200, ACK, BYE, 200 (6 messages in, like `make bench-sip` counts
them, plus the 100 and the forwarded copies out).  OPTIONS is the
`make bench-sip` options case: one OPTIONS for the proxy itself, answered 200.

A message is timed from the worker's socket read (UdpListener.on_readable,
what the loop's reader calls) until every task it started has finished (loop
iterations included): CPU time of the thread (CLOCK_THREAD_CPUTIME_ID), so
other load on the machine disturbs it less than wall-clock time.  The peers'
work (building the next message, reading the proxy's output) is not timed.

    python -m bench.sip_cpu                        # this tree, 5 rounds
    python -m bench.sip_cpu --tree /tmp/base --tree .   # A B A B: rounds interleaved
    python -m bench.sip_cpu --stages               # where a message's time goes

With several --tree, each round runs each tree in a child process
(PYTHONPATH=TREE, so `import oversipd` takes that tree) in turn, starting
with the next one each round; the median per tree is printed.  --stages
wraps the hot functions with exclusive per-stage clocks; what a wrapper costs
(measured first on an empty function) is taken off each call, but the
figures stay approximate: compare them with the totals of a run without it.
Final figures need a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "examples" / "proxy_server.py"
OPTIONS_SCRIPT = HERE / "oversipd_options.py"   # make bench-sip's options case
KINDS = ("INVITE", "180", "200", "ACK", "BYE", "200 BYE")
clock = time.thread_time_ns


# --- the peers' messages (SIPp's scenarios, written out) ------------------------------

def initial(method: str, ruri: str, uac: str, n: int, extra: str) -> bytes:
    """An out-of-dialog request as SIPp's scenarios write it (`extra`: their own last header)."""
    to = ruri.split(";", 1)[0]
    return (f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {uac};branch=z9hG4bK-uac-{n}-{method}\r\n"
            f"From: bench <sip:bench@{uac}>;tag={n}b1\r\n"
            f"To: <{to}>\r\n"
            f"Call-ID: {n}-{method}@{uac}\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Contact: <sip:bench@{uac};transport=udp>\r\n"
            "Max-Forwards: 70\r\n"
            f"{extra}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def invite(uac: str, uas: str, n: int) -> bytes:
    return initial("INVITE", f"sip:service@{uas};transport=udp", uac, n, "Subject: bench")


def options(uac: str, proxy: str, n: int) -> bytes:
    return initial("OPTIONS", f"sip:service@{proxy}", uac, n, "Accept: application/sdp")


def header_lines(message: bytes) -> tuple[str, list[str]]:
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    first, *lines = head.split("\r\n")
    return first, lines


def named(lines: list[str], name: str) -> list[str]:
    prefix = name.lower() + ":"
    return [line for line in lines if line.lower().startswith(prefix)]


def value(line: str) -> str:
    return line.split(":", 1)[1].strip()


def response(request: bytes, status: str, uas: str) -> bytes:
    """The callee's answer: Via, Record-Route, From, To (tagged), Call-ID, CSeq copied."""
    _, lines = header_lines(request)
    copied = named(lines, "via") + named(lines, "record-route") + named(lines, "from")
    to = value(named(lines, "to")[0])
    if ";tag=" not in to:
        to += ";tag=uas1"
    copied += [f"To: {to}"] + named(lines, "call-id") + named(lines, "cseq")
    return "\r\n".join([f"SIP/2.0 {status}", *copied, f"Contact: <sip:service@{uas};transport=udp>",
                        "Content-Length: 0", "", ""]).encode()


def in_dialog(ok: bytes, method: str, cseq: int, uac: str, n: int) -> bytes:
    """ACK or BYE along the route the 200 recorded (the caller's side: Record-Route reversed)."""
    _, lines = header_lines(ok)
    routes = [value(line) for line in named(lines, "record-route")]
    contact = value(named(lines, "contact")[0]).strip("<>")
    route = [f"Route: {', '.join(reversed(routes))}"] if routes else []
    return "\r\n".join([f"{method} {contact} SIP/2.0",
                        f"Via: SIP/2.0/UDP {uac};branch=z9hG4bK-uac-{n}-{cseq}{method}", *route,
                        f"From: bench <sip:bench@{uac}>;tag={n}b1",
                        f"To: {value(named(lines, 'to')[0])}",
                        f"Call-ID: {value(named(lines, 'call-id')[0])}",
                        f"CSeq: {cseq} {method}", f"Contact: <sip:bench@{uac};transport=udp>",
                        "Max-Forwards: 70", "Content-Length: 0", "", ""]).encode()


class Peer:
    """A UDP socket of this process: the caller or the callee."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = "%s:%d" % self.sock.getsockname()

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536))
            except BlockingIOError:
                return out

    def expect(self, start: str) -> bytes:
        """The one message starting with `start` among what came (a 100 Trying may come first)."""
        got = self.received()
        for data in got:
            if data.startswith(start.encode()):
                return data
        firsts = [data.split(b"\r\n", 1)[0] for data in got]
        raise RuntimeError(f"expected {start!r}, got {firsts}")


# --- the worker -------------------------------------------------------------------------

class Worker:
    """What WorkerSip.start builds for one slot, on a socket of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from oversipd import logger
        from oversipd.sip.proxy import engine as proxy
        from oversipd.sip.core.sipcore import SipCore
        from oversipd.sip.counters import Counters
        from oversipd.sip.proxy_settings import DnsSettings, ProxySettings
        from oversipd.sip.settings import SipSettings
        from oversipd.sip.transport.listeners import UdpListener

        logger.configure("warn")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.counters = Counters(None)
        routing = ProxySettings(name="proxy_out", do_record_routing=True, use_dns=False)
        proxy.configure({"proxy_out": routing,
                         "proxy_in_dialog": ProxySettings(name="proxy_in_dialog", use_dns=False)},
                        DnsSettings())
        self.core = SipCore(SipSettings(listen=("sip_udp",)), [self.address], self.counters.row(1), loop)
        self.listener = UdpListener("sip_udp", self.sock, self.core, loop)
        loop.remove_reader(self.sock.fileno())   # the harness calls on_readable itself, timed
        self.core.proxy = proxy.ProxyEngine(self.core, 1, {"sip_udp": self.listener},
                                            {"udp": self.address}, loop)
        self.loop = loop

    async def handle(self) -> int:
        """Read what is queued on the worker's socket and let the tasks it started finish: CPU ns."""
        tasks = self.core.tasks
        start = clock()
        self.listener.on_readable()
        while tasks:
            await asyncio.sleep(0)
        return clock() - start

    def close(self) -> None:
        self.core.close()
        self.sock.close()


def load_script(path: Path) -> None:
    """Run a server script: its @SipEvents.on_request becomes the handler."""
    import runpy
    runpy.run_path(str(path), run_name=path.stem)


# --- one run ---------------------------------------------------------------------------

async def run_calls(worker: Worker, calls: int, first: int, times: dict[str, list[int]]) -> None:
    uac, uas = Peer(), Peer()

    async def step(kind: str, peer: Peer, data: bytes) -> None:
        peer.send(data, worker.address)
        times[kind].append(await worker.handle())

    for n in range(first, first + calls):
        await step("INVITE", uac, invite(uac.address, uas.address, n))
        forwarded = uas.expect("INVITE")
        uac.expect("SIP/2.0 100")
        await step("180", uas, response(forwarded, "180 Ringing", uas.address))
        uac.expect("SIP/2.0 180")
        await step("200", uas, response(forwarded, "200 OK", uas.address))
        ok = uac.expect("SIP/2.0 200")
        await step("ACK", uac, in_dialog(ok, "ACK", 1, uac.address, n))
        uas.expect("ACK")
        await step("BYE", uac, in_dialog(ok, "BYE", 2, uac.address, n))
        bye = uas.expect("BYE")
        await step("200 BYE", uas, response(bye, "200 OK", uas.address))
        uac.expect("SIP/2.0 200")
    uac.sock.close()
    uas.sock.close()


async def run_options(worker: Worker, count: int, first: int, times: list[int]) -> None:
    uac = Peer()
    proxy = "%s:%d" % worker.address
    for n in range(first, first + count):
        uac.send(options(uac.address, proxy, n), worker.address)
        times.append(await worker.handle())
        uac.expect("SIP/2.0 200")
    uac.sock.close()


async def measure(calls: int, warmup: int, stages: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    worker = Worker(loop)
    load_script(SCRIPT)
    gc.freeze()   # what a worker inherits from the master, which freezes before it forks
    from oversipd import worker as worker_module
    tune = getattr(worker_module, "tune_collector", None)   # absent from trees before it
    if tune is not None:
        tune()
    warm: dict[str, list[int]] = {kind: [] for kind in KINDS}
    await run_calls(worker, warmup, 0, warm)
    await run_options(worker, warmup, 0, [])
    clocks = StageClocks() if stages else None
    results: dict[str, Any] = {}
    times: dict[str, list[int]] = {kind: [] for kind in KINDS}
    local_options: list[int] = []
    options_only: list[int] = []
    if clocks:
        clocks.install(worker)
    collector = CollectorClock()
    await run_calls(worker, calls, warmup, times)
    results["gc"] = collector.stop() / calls / 1000
    if clocks:
        results["call_stages"] = clocks.take(calls)
    await run_options(worker, calls, warmup, local_options)
    if clocks:
        results["local_options_stages"] = clocks.take(calls)
    load_script(OPTIONS_SCRIPT)
    await run_options(worker, calls, warmup + calls, options_only)
    if clocks:
        results["options_stages"] = clocks.take(calls)
    worker.close()
    results["per_kind"] = {kind: statistics.median(values) / 1000 for kind, values in times.items()}
    results["call"] = sum(sum(values) for values in times.values()) / calls / 1000
    results["local_options"] = statistics.median(local_options) / 1000
    results["options"] = statistics.median(options_only) / 1000
    results["oversipd"] = sys.modules["oversipd"].__file__
    return results


class CollectorClock:
    """CPU time in the cycle collector (gc.callbacks) until stop(): part of the messages' time."""

    def __init__(self) -> None:
        self.spent = 0
        self.started = 0
        gc.callbacks.append(self.on_gc)

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = clock()
        else:
            self.spent += clock() - self.started

    def stop(self) -> int:
        gc.callbacks.remove(self.on_gc)
        return self.spent


# --- --stages: exclusive clocks around the hot functions --------------------------------------

class StageClocks:
    """Each wrapped function's time goes to its stage, minus what the functions it calls take."""

    # (module, object, attribute, stage); what is missing in a tree is skipped
    WRAPPED = [
        ("oversipd.sip.syntax.message", None, "_parse", "parse"),
        ("oversipd.sip.syntax.message", None, "_scan", "parse"),
        ("oversipd.sip.transaction.server", "TransactionTable", "match", "server transactions"),
        ("oversipd.sip.transaction.server", "TransactionTable", "create", "server transactions"),
        ("oversipd.sip.transaction.server", "TransactionTable", "respond", "server transactions"),
        ("oversipd.sip.core.sipcore", None, "transaction_key", "server transactions"),
        ("oversipd.sip.transaction.client", "ClientTable", "create", "client transactions"),
        ("oversipd.sip.transaction.client", "ClientTable", "match", "client transactions"),
        ("oversipd.sip.transaction.client", "ClientTable", "receive", "client transactions"),
        ("oversipd.sip.proxy.engine", "ProxyEngine", "next_deadline", "timers"),
        ("oversipd.sip.transaction.client", "ClientTable", "next_deadline", "timers"),
        ("oversipd.sip.transaction.server", "TransactionTable", "next_deadline", "timers"),
        ("oversipd.sip.core.timers", "TableTimer", "arm", "timers"),
        ("oversipd.sip.syntax.message", "Message", "to_bytes", "serialise"),
        ("oversipd.sip.syntax.message", "Request", "make_response", "make response"),
        ("oversipd.sip.core.sipcore", "SipCore", "stamp_via", "Via stamp (fix_nat)"),
        ("oversipd.sip.core.request", "Request", "loose_route", "loose_route"),
        ("oversipd.sip.core.request", "Request", "destination_myself", "script"),
        ("oversipd.sip.core.request", "Request", "check_max_forwards", "script"),
        ("oversipd.sip.core.sipcore", "SipCore", "run_handler", "script"),
        ("oversipd.sip.proxy.engine", "Proxy", "__init__", "script"),
        ("oversipd.sip.proxy.engine", "ProxyEngine", "route", "proxy: route"),
        ("oversipd.sip.proxy.engine", "ProxyEngine", "start", "proxy: copy, resolve, send"),
        ("oversipd.sip.proxy.engine", "ProxyEngine", "forward_ack", "proxy: copy, resolve, send"),
        ("oversipd.sip.proxy.headers", "OurHeaders", "add", "proxy: our headers"),
        ("oversipd.sip.proxy.engine", "ProxyEngine", "receive_response", "proxy: response match/forward"),
        ("oversipd.sip.proxy.dns", "Rfc3263Resolver", "resolve", "resolve (IP literal)"),
        ("oversipd.sip.transport.listeners", "UdpListener", "send", "socket send"),
        ("oversipd.sip.syntax.uri", None, "parse_uri", "URI/name-addr parse"),
        ("oversipd.sip.syntax.uri", None, "parse_name_addr", "URI/name-addr parse"),
        ("oversipd.sip.syntax.uri", None, "parse_via", "URI/name-addr parse"),
        ("oversipd.logger", None, "emit", "script: log calls"),
    ]

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.stack: list[list[Any]] = []   # [stage, started, inner ns]
        self.total = 0
        self.cost_in = self.cost_out = 0.0   # ns a wrapper adds inside its stage's clock and around it
        self.calibrate()

    def calibrate(self, calls: int = 20000) -> None:
        """What one wrapped call costs its own stage and its caller's: taken off every call."""
        noop = self.wrap(lambda: None, "calibration")
        self.stack.append(["caller", clock(), 0])
        for _ in range(calls):
            noop()
        self.close_top()
        bare = clock()
        for _ in range(calls):
            (lambda: None)()
        bare = clock() - bare
        self.cost_in = self.totals.pop("calibration") / calls
        self.cost_out = max(0.0, (self.totals.pop("caller") - bare) / calls)

    def install(self, worker: Worker) -> None:
        import importlib
        for module_name, owner_name, attr, stage in self.WRAPPED:
            if stage is None:
                continue
            module = importlib.import_module(module_name)
            owner = module if owner_name is None else getattr(module, owner_name, None)
            if owner is None or not hasattr(owner, attr):
                continue
            original = getattr(owner, attr)
            wrapped = self.wrap(original, stage)
            setattr(owner, attr, wrapped)
            for other in ("oversipd.sip.core.sipcore", "oversipd.sip.proxy.engine", "oversipd.sip.syntax.message",
                          "oversipd.sip.core.request", "oversipd.sip.transaction.client"):
                mod = sys.modules.get(other)
                if owner_name is None and mod is not None and getattr(mod, attr, None) is original:
                    setattr(mod, attr, wrapped)
        handle = worker.handle

        async def timed() -> int:
            self.stack.append(["core, loop, the rest", clock(), 0])
            spent = await handle()
            self.close_top()
            self.total += spent
            return spent
        worker.handle = timed  # type: ignore[method-assign]

    def wrap(self, fn: Callable, stage: str) -> Callable:
        stack = self.stack
        if asyncio.iscoroutinefunction(fn):
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                stack.append([stage, clock(), 0])
                try:
                    return await fn(*args, **kwargs)   # none of these suspends for an IP literal
                finally:
                    self.close_top()
        else:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                stack.append([stage, clock(), 0])
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.close_top()
        return wrapper

    def close_top(self) -> None:
        stage, started, inner = self.stack.pop()
        spent = clock() - started
        self.totals[stage] = self.totals.get(stage, 0) + spent - inner - self.cost_in
        if self.stack:
            self.stack[-1][2] += spent + self.cost_out

    def take(self, count: int) -> dict[str, float]:
        out = {stage: ns / count / 1000 for stage, ns in sorted(self.totals.items(), key=lambda i: -i[1])}
        out["(total, wrapped)"] = self.total / count / 1000
        out["(sum of the stages, each wrapper's own cost taken off)"] = sum(self.totals.values()) / count / 1000
        self.totals, self.total = {}, 0
        return out


# --- the driver ---------------------------------------------------------------------------

def child(args: argparse.Namespace) -> None:
    if args.no_gc:
        gc.disable()
    result = asyncio.run(measure(args.calls, args.warmup, args.stages))
    print(json.dumps(result))


def run_tree(tree: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--calls", str(args.calls),
               "--warmup", str(args.warmup)] + (["--stages"] if args.stages else []) \
        + (["--no-gc"] if args.no_gc else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{tree}: the run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", help="an oversipd source tree (repeat: A B A B)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000, help="calls (and OPTIONS) timed per run")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--stages", action="store_true", help="time each stage of a message")
    parser.add_argument("--no-gc", action="store_true",
                        help="gc.disable() in the worker: the code's cost without the cycle collector's")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    trees = args.tree or [str(HERE.parent)]
    runs: dict[str, list[dict[str, Any]]] = {tree: [] for tree in trees}
    for round_number in range(args.rounds):
        for i in range(len(trees)):
            tree = trees[(round_number + i) % len(trees)]
            runs[tree].append(run_tree(tree, args))
    report(trees, runs, args)


def report(trees: list[str], runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    med = statistics.median
    print(f"CPU µs per message (thread CPU time), median of {args.rounds} runs of {args.calls} calls"
          " and as many OPTIONS; final figures need a quiet machine")
    header = ["tree", "call (6 msgs)", "µs/msg", "of which gc", *KINDS, "OPTIONS (proxy_server)",
              "OPTIONS (options script)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for tree in trees:
        rs = runs[tree]
        call = med(r["call"] for r in rs)
        cells = [tree, f"{call:.0f}", f"{call / 6:.1f}", f"{med(r['gc'] for r in rs) / 6:.1f}"]
        cells += [f"{med(r['per_kind'][kind] for r in rs):.1f}" for kind in KINDS]
        cells += [f"{med(r[key] for r in rs):.1f}" for key in ("local_options", "options")]
        print("| " + " | ".join(cells) + " |")
    if args.stages:
        for tree in trees:
            for name, key in (("one call (6 messages in)", "call_stages"),
                              ("one OPTIONS (proxy_server)", "local_options_stages"),
                              ("one OPTIONS (options script)", "options_stages")):
                print(f"\n{tree}: where {name} goes, µs (median of runs; wrapped)")
                stages = runs[tree][0][key].keys()
                for stage in stages:
                    print(f"| {stage} | {med(r[key].get(stage, 0.0) for r in runs[tree]):.1f} |")


if __name__ == "__main__":
    main()
