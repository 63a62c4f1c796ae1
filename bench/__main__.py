"""`python -m bench`: run the lifecycle benchmarks and print (or write) the table."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from .figures import Bench, Options
from .markdown import keep_sections
from .report import machine_facts, table

QUICK = {"runs": 5, "respawn_runs": 10, "idle_seconds": 3.0}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="runs per figure (default 10)")
    parser.add_argument("--respawn-runs", type=int, default=20, help="respawns per daemon (default 20)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="length of one idle window (default 30)")
    parser.add_argument("--workers", type=int, default=4, help="workers for every figure but start_1 (default 4)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    parser.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent,
                        help="where the oversipd and gunicorn commands are (default: this Python's)")
    parser.add_argument("--write", type=Path, metavar="MARKDOWN", help="also write the report to this file")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every sample as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (logs, events)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def render(args: argparse.Namespace, body: str, facts: list[str], seconds: float, command: str) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "# Benchmarks: oversipd and gunicorn, side by side",
        "",
        f"Made by `{command}` on {when} in {seconds:.0f} s "
        f"({args.runs} runs per figure, {args.respawn_runs} respawns, idle windows of {args.idle_seconds:g} s; "
        "oversipd and gunicorn take turns run by run).",
        "",
        *[f"* {fact}" for fact in facts],
        "",
        body,
        "",
        "Every figure comes from `EVENT PID TIME_NS` lines (CLOCK_MONOTONIC) that a probe in each daemon "
        "writes (`bench/probes/`), against the harness's own monotonic stamp of the signal it sent or of "
        "the spawn; stop ends when the harness's pidfd on the master becomes readable. "
        "Context switches and memory come from psutil, CPU time from /proc/PID/schedstat (nanoseconds; "
        "psutil counts 10 ms ticks). See `bench/README.md`.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["python", "-m", "bench", *(argv or sys.argv[1:])])
    began = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ovsbench-") as workdir:
        options = Options(runs=args.runs, respawn_runs=args.respawn_runs, idle_seconds=args.idle_seconds,
                          workers=args.workers, bin_dir=args.bin_dir, workdir=Path(workdir))
        bench = Bench(options)
        for phase, run in (("start, 1 worker", lambda: bench.start_runs(1)),
                           (f"start, memory and stop, {args.workers} workers", lambda: bench.start_runs(args.workers)),
                           ("idle, reload, code reload, respawn", bench.long_running_runs),
                           ("restart (stop + start)", bench.restarts)):
            print(f"bench: {phase} ...", file=sys.stderr, flush=True)
            run()
        if args.keep:
            kept = Path(tempfile.mkdtemp(prefix="ovsbench-kept-"))
            os.rename(workdir, kept / "runs")
            os.mkdir(workdir)  # for TemporaryDirectory's cleanup
            print(f"bench: run directories kept in {kept / 'runs'}", file=sys.stderr)
    seconds = time.monotonic() - began
    report = render(args, table(bench.samples, args.workers, args.idle_seconds),
                    machine_facts(load_before, os.getloadavg()), seconds, command)
    print(report)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        # The sections other benchmarks own (make bench-sip's) stay.
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(keep_sections(old, report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(bench.samples.values, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
