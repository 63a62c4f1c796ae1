"""`oversipd reload | stop | status`: act on the running master found through its pid file."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import EXIT_FATAL, EXIT_NOT_RUNNING, EXIT_OK, NO_PID_FILE, NOT_RUNNING, ConfigError
from .pidfile import running_pid
from .process import DEGRADED_MARK, all_worker_processes
from .settings import CoreSettings, default_conf_path, load_settings

if TYPE_CHECKING:
    import psutil

# `stop` gives the master graceful_timeout to stop its workers, plus this
# much for its own exit, before it reports failure.
STOP_MARGIN = 5.0


@dataclass(frozen=True)
class Target:
    """Where the running master is recorded, and how long it may take to stop."""

    pid_file: Path
    graceful_timeout: float

    def pid(self) -> int | None:
        return running_pid(self.pid_file)


def find_target(args: argparse.Namespace) -> Target:
    """`--pid-file` as given (relative to the current directory), else the configuration's."""
    if args.pid_file:
        graceful = load_settings(args.conf).core.graceful_timeout if args.conf else CoreSettings.graceful_timeout
        return Target(Path(os.path.abspath(args.pid_file)), graceful)
    settings = load_settings(args.conf or default_conf_path())
    if settings.core.pid_file is None:
        raise ConfigError(str(settings.path), "core.pid_file", NO_PID_FILE.format(conf=settings.path))
    return Target(settings.core.pid_file, settings.core.graceful_timeout)


def run(args: argparse.Namespace) -> int:
    """Run the control command named by `args.command`; return its exit status."""
    return COMMANDS[args.command](find_target(args))


def _say(text: str) -> None:
    print(f"oversipd: {text}")


def _complain(text: str) -> None:
    print(f"oversipd: {text}", file=sys.stderr)


# --- reload ------------------------------------------------------------------

def reload(target: Target) -> int:
    """SIGHUP to the master; 1 when no daemon runs."""
    pid = target.pid()
    if pid is None:
        _complain(NOT_RUNNING.format(path=target.pid_file))
        return EXIT_FATAL
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        _complain(f"cannot signal the master (pid {pid}): {error.strerror}")
        return EXIT_FATAL
    _say(f"sent SIGHUP to the master (pid {pid})")
    return EXIT_OK


# --- stop ----------------------------------------------------------------------

def stop(target: Target) -> int:
    """SIGTERM to the master, then wait until it is gone; 0 when nothing runs."""
    pid = target.pid()
    if pid is None:
        _say(NOT_RUNNING.format(path=target.pid_file) + "; nothing to stop")
        return EXIT_OK
    try:
        # A pidfd names this very process: no signal to a recycled pid, and
        # it becomes readable the moment the process exits.
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        _say(f"the master (pid {pid}) is gone")
        return EXIT_OK
    try:
        return _stop_and_wait(pid, pidfd, target.graceful_timeout + STOP_MARGIN)
    finally:
        os.close(pidfd)


def _stop_and_wait(pid: int, pidfd: int, timeout: float) -> int:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    except ProcessLookupError:
        return EXIT_OK
    except OSError as error:
        _complain(f"cannot signal the master (pid {pid}): {error.strerror}")
        return EXIT_FATAL
    readable, _, _ = select.select([pidfd], [], [], timeout)
    if not readable:
        _complain(f"the master (pid {pid}) is still running {timeout:g} s after SIGTERM")
        return EXIT_FATAL
    _say(f"stopped (pid {pid})")
    return EXIT_OK


# --- status ----------------------------------------------------------------------

def status(target: Target) -> int:
    """The master and its workers: slot, generation, pid, state, uptime, RSS, CPU; 3 when not running."""
    import psutil  # only `status` pays for the import

    pid = target.pid()
    if pid is None:
        _say(NOT_RUNNING.format(path=target.pid_file))
        return EXIT_NOT_RUNNING
    try:
        master = psutil.Process(pid)
        rows = [_row(master, "master", "-", "-")] + [
            _row(process, "worker", str(slot), str(generation))
            for slot, generation, process in all_worker_processes(pid)]
    except psutil.NoSuchProcess:
        _say(NOT_RUNNING.format(path=target.pid_file))
        return EXIT_NOT_RUNNING
    _say(f"running: master pid {pid}, {len(rows) - 1} worker(s), pid file {target.pid_file}")
    for row in [("ROLE", "SLOT", "GEN", "PID", "STATE", "UPTIME", "RSS", "CPU"), *rows]:
        print("{:<7} {:>4} {:>4} {:>8}  {:<9} {:>12} {:>10} {:>9}".format(*row))
    _print_sip_counters(target.pid_file)
    return EXIT_OK


def _print_sip_counters(pid_file: Path) -> None:
    """SIP.md §11: received, sent, dropped and per status class, per worker slot and in total."""
    from .sip.counters import NAMES, read_counters

    rows = read_counters(pid_file)
    if rows is None:
        return
    total = {name: sum(row[name] for row in rows.values()) for name in NAMES}
    print("sip: " + ", ".join(f"{name} {total[name]}" for name in NAMES))
    header = ("SLOT", *NAMES)
    widths = [4] + [max(len(name), 8) for name in NAMES]
    for row in [header, *((str(slot), *(str(values[n]) for n in NAMES)) for slot, values in sorted(rows.items()))]:
        print(" ".join(f"{cell:>{width}}" for cell, width in zip(row, widths)))


def _row(process: "psutil.Process", role: str, slot: str, generation: str) -> tuple[str, ...]:
    import psutil

    with process.oneshot():
        state = _field(process.status, str)
        uptime = _field(process.create_time, lambda t: _duration(time.time() - t))
        rss = _field(process.memory_info, lambda m: f"{m.rss / 2**20:.1f} MiB")
        cpu = _field(process.cpu_times, lambda c: f"{c.user + c.system:.2f} s")
    if state == psutil.STATUS_ZOMBIE:
        state = "exited"
    elif role == "worker" and _field(process.cmdline, lambda parts: " ".join(parts).strip()).endswith(DEGRADED_MARK):
        state = "degraded"   # serving without a resource it could not open (docs/overload.md)
    return role, slot, generation, str(process.pid), state, uptime, rss, cpu


def _field(read: Callable[[], object], show: Callable[[object], str]) -> str:
    import psutil

    try:
        return show(read())
    except psutil.Error:  # not ours to read, or it just exited
        return "?"


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock


COMMANDS: dict[str, Callable[[Target], int]] = {"reload": reload, "stop": stop, "status": status}
