"""The two daemons under test, started the same way: a config, a probe, a child process.

The harness starts each daemon as its own child, so it sees the master's
exit through a pidfd the moment it happens, and stamps every signal it
sends with time.monotonic_ns() right before sending it.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from .events import Event, EventStream

PROBES = Path(__file__).resolve().parent / "probes"
EXIT_TIMEOUT = 60.0


class Daemon:
    """One run of a daemon in its own directory, with its events stream."""

    name = "daemon"

    def __init__(self, workdir: Path, workers: int, bin_dir: Path) -> None:
        self.workdir = workdir
        self.workers = workers
        self.bin_dir = bin_dir.absolute()  # the daemon runs in workdir
        workdir.mkdir(parents=True)
        self.events = EventStream(workdir / "events.fifo", workdir / "events.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.write_files()

    def write_files(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, "BENCH_EVENTS": str(self.events.path)}

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> int:
        """Start the master; return the monotonic time (ns) just before the spawn."""
        log = open(self.workdir / "daemon.log", "ab")
        t0 = time.monotonic_ns()
        self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=self.environment(),
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
        log.close()
        self.pidfd = os.pidfd_open(self.process.pid)
        return t0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_started(self, count: int, after_ns: int, exclude: frozenset[int] = frozenset()) -> list[Event]:
        return self.events.wait_count("started", count, after_ns, exclude)

    def send(self, signum: int, pid: int | None = None) -> int:
        """Send a signal; return the monotonic time (ns) just before it was sent."""
        t = time.monotonic_ns()
        os.kill(self.pid if pid is None else pid, signum)
        return t

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Block on the pidfd until the master exits; return when that was seen (ns)."""
        assert self.pidfd is not None and self.process is not None
        readable, _, _ = select.select([self.pidfd], [], [], timeout)
        seen = time.monotonic_ns()
        if not readable:
            raise TimeoutError(f"{self.name} (pid {self.pid}) still running after {timeout:g} s")
        self.process.wait()
        return seen

    def stop(self) -> None:
        """TERM and wait; then release everything this run holds."""
        if self.process is not None and self.process.poll() is None:
            self.send(signal.SIGTERM)
            try:
                self.wait_exit()
            except TimeoutError:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.events.close()

    # --- processes ------------------------------------------------------------

    def worker_processes(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children()

    def processes(self) -> list[psutil.Process]:
        """The master first, then its workers."""
        return [psutil.Process(self.pid), *self.worker_processes()]

    def started_at(self, pid: int) -> int | None:
        """When the worker `pid` reported started (ns), if it did."""
        return next((e.t_ns for e in self.events.events if e.kind == "started" and e.pid == pid), None)


class Oversipd(Daemon):
    name = "oversipd"

    def write_files(self) -> None:
        modules = self.workdir / "modules.d"
        modules.mkdir(mode=0o755)
        os.chmod(modules, 0o755)  # StrictModes: not group/world-writable, whatever the umask
        probe = modules / "benchprobe.py"
        shutil.copyfile(PROBES / "oversipd_probe.py", probe)
        os.chmod(probe, 0o644)
        (self.workdir / "oversipd.conf").write_text(
            "# written by the benchmark harness; everything else at its default\n"
            "[core]\n"
            f"workers = {self.workers}\n"
            'modules_dir = "modules.d"\n'
            'server_script = ""\n')

    def command(self) -> list[str]:
        return [str(self.bin_dir / "oversipd"), "run", "-c", str(self.workdir / "oversipd.conf")]

    def edit_probe(self, note: str) -> None:
        """Change the probe module's content, so that the next SIGHUP is a code reload."""
        with open(self.workdir / "modules.d" / "benchprobe.py", "a", encoding="ascii") as probe:
            probe.write(f"# {note}\n")


class Gunicorn(Daemon):
    name = "gunicorn"

    def write_files(self) -> None:
        shutil.copyfile(PROBES / "gunicorn_probe.py", self.workdir / "gunicorn_probe.py")
        shutil.copyfile(PROBES / "wsgi_app.py", self.workdir / "wsgi_app.py")

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "BENCH_WORKERS": str(self.workers),
                "BENCH_BIND": f"unix:{self.workdir / 'gunicorn.sock'}"}

    def command(self) -> list[str]:
        return [str(self.bin_dir / "gunicorn"), "-c", "gunicorn_probe.py", "wsgi_app:application"]


DAEMONS: tuple[type[Daemon], ...] = (Oversipd, Gunicorn)
