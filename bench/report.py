"""Turning samples into the table: min / median / max per daemon, the ratio of medians, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from dataclasses import dataclass
from importlib import metadata

from .figures import Samples


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str        # "ms", "MiB" or "" (a count)
    target: str = ""


def figures(workers: int, idle_seconds: float) -> list[Figure]:
    idle = f"idle {idle_seconds:g} s, {workers} workers"
    return [
        Figure("start_1", "start → every worker started, 1 worker", "ms"),
        Figure(f"start_{workers}", f"start → every worker started, {workers} workers", "ms", "≤ 200 ms"),
        Figure(f"master_up_{workers}", f"… of which start → the master loaded its probe ⁴", "ms"),
        Figure("respawn", "respawn: SIGKILL of a worker → its replacement started", "ms", "≤ 5 ms"),
        Figure(f"reload_{workers}", f"reload, {workers} workers: SIGHUP → every worker reloaded ¹", "ms", "≤ 3 ms"),
        Figure(f"code_reload_{workers}", f"code reload, {workers} workers: SIGHUP → every new worker started "
               "and every old worker gone ⁵", "ms", "≤ 1.0× gunicorn's"),
        Figure(f"restart_{workers}", f"restart (stop + start), {workers} workers: SIGTERM → every new worker "
               "started ⁶", "ms"),
        Figure(f"stop_{workers}", f"stop, {workers} workers: SIGTERM → master exited", "ms", "≤ 30 ms"),
        Figure("idle_master_wakeups", f"{idle}: master voluntary context switches", "",
               "heartbeat cadence ²"),
        Figure("idle_master_cpu", f"{idle}: master CPU time", "ms"),
        Figure("idle_worker_wakeups", f"{idle}: voluntary context switches, each worker ³", ""),
        Figure("idle_worker_cpu", f"{idle}: CPU time, each worker ³", "ms"),
        Figure("mem_master_rss", f"memory, {workers} workers: master RSS", "MiB"),
        Figure("mem_master_uss", f"memory, {workers} workers: master USS", "MiB"),
        Figure("mem_master_pss", f"memory, {workers} workers: master PSS", "MiB"),
        Figure("mem_worker_rss", f"memory, {workers} workers: RSS, each worker ³", "MiB"),
        Figure("mem_worker_uss", f"memory, {workers} workers: USS, each worker ³", "MiB"),
        Figure("mem_worker_pss", f"memory, {workers} workers: PSS, each worker ³", "MiB"),
        Figure("mem_total_pss", f"memory, {workers} workers: total PSS (master + workers)", "MiB",
               "≤ gunicorn's"),
    ]


NOTES = [
    "¹ oversipd reloads its workers in place (SIGHUP → every worker's on_reload callbacks done); "
    "gunicorn replaces them (SIGHUP → every new worker's post_worker_init done).",
    "² oversipd's master sleeps until a worker_timeout deadline (30 s by default) comes due; "
    "its workers write their heartbeat to shared memory every min(5 s, worker_timeout/4) without waking it.",
    "³ one sample per worker and run.",
    "⁴ the interpreter and the imports, before any fork: oversipd imports its drop-in modules "
    "(the probe) before the fork; gunicorn runs its on_starting hook before binding and forking.",
    "⁵ oversipd: the probe module is edited before each SIGHUP, so each one checks the new code in a "
    "throw-away child and swaps in a new generation of workers (the master's PID unchanged, no listening "
    "socket closed); gunicorn: SIGHUP replaces its workers (which picks up new code only without --preload). "
    "Both end when the last old worker has exited (a pidfd on each).",
    "⁶ oversipd alone: what `systemctl restart` does; its listening sockets are closed in between, so "
    "clients are refused (tests/test_core_generations.py shows 0 refused over a code reload).",
]


def number(value: float, unit: str) -> str:
    if unit == "":
        return f"{value:.0f}"
    if unit == "ms" and value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}"


def summary(values: list[float], unit: str) -> str:
    if not values:
        return "—"
    return " / ".join(number(v, unit) for v in (min(values), statistics.median(values), max(values)))


def ratio(a: list[float], b: list[float]) -> str:
    if not a or not b or statistics.median(b) == 0:
        return "—"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def table(samples: Samples, workers: int, idle_seconds: float) -> str:
    lines = ["| figure | unit | oversipd min / median / max | gunicorn min / median / max | "
             "ratio of medians | target (oversipd) | n |",
             "|---|---|---|---|---|---|---|"]
    for fig in figures(workers, idle_seconds):
        per = samples.values.get(fig.key, {})
        a, b = per.get("oversipd", []), per.get("gunicorn", [])
        if not a and not b:
            continue
        lines.append(f"| {fig.label} | {fig.unit or 'count'} | {summary(a, fig.unit)} | {summary(b, fig.unit)} "
                     f"| {ratio(a, b)} | {fig.target} | {len(a)} / {len(b)} |")
    return "\n".join(lines + [""] + [n + "  " for n in NOTES])


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> list[str]:
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores",
        f"kernel: {platform.system()} {platform.release()}",
        f"Python: {platform.python_implementation()} {sys.version.split()[0]}",
        f"oversipd {version('oversipd')}, gunicorn {version('gunicorn')} (sync workers), psutil {version('psutil')}",
        "load average (1/5/15 min) before: " + " ".join(f"{x:.2f}" for x in load_before)
        + "; after: " + " ".join(f"{x:.2f}" for x in load_after),
    ]
