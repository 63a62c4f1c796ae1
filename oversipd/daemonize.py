"""`oversipd run --daemonize`: detach with python-daemon and return once the daemon is ready.

The launching process forks a child that becomes the daemon through
python-daemon's `DaemonContext` (two more forks, a new session, stdio on
/dev/null, every other descriptor closed).  The daemon tells the launcher
how its start goes over a pipe, one line at a time:

    pid N        the daemon's pid
    log TEXT     a CRIT (or worse) log line written before it was ready
    status N     the outcome: 0 ready (every worker ran on_started), else failed

The launcher reads lines until `status`, never until EOF: workers forked
before the daemon was ready still hold the pipe's write end.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from typing import Callable

from . import logger
from .errors import EXIT_FATAL, EXIT_OK, EXIT_USAGE, ConfigError, HaltServer, StartupError

DEFAULT_READY_TIMEOUT = 60.0
LINE_LIMIT = select.PIPE_BUF - 1  # one write of at most PIPE_BUF bytes is atomic
START_FAILED = "start-up failed (exit status {status})"
STOPPED_BEFORE_READY = "the daemon stopped before it was ready"
EXITED_DURING_START = "the daemon exited during start-up"
NOT_READY_IN_TIME = "the daemon was not ready within {timeout:g} s (--ready-timeout); stopping it"


class StartupReport(logging.Handler):
    """The daemon's end of the ready pipe; also forwards CRIT lines until ready."""

    def __init__(self, fd: int) -> None:
        super().__init__(level=logging.CRITICAL)
        self.fd: int | None = fd
        self.finished = False

    def send(self, kind: str, text: str) -> None:
        if self.fd is None:
            return
        line = f"{kind} {text}".replace("\n", " ")[:LINE_LIMIT] + "\n"
        try:
            os.write(self.fd, line.encode(errors="replace"))
        except OSError:
            self.fd = None  # the launcher is gone (EPIPE): nobody to tell

    def emit(self, record: logging.LogRecord) -> None:
        """A CRIT line before the daemon was ready: the launcher prints it."""
        for line in self.format(record).split("\n"):
            self.send("log", line)

    def line(self, text: str) -> None:
        self.send("log", text)

    def ready(self) -> None:
        """Every worker ran on_started: the launcher may return 0."""
        self.finish(EXIT_OK)

    def finish(self, status: int) -> None:
        """Send the outcome once, then stop forwarding and close our end."""
        if self.finished:
            return
        self.finished = True
        self.send("status", str(status))
        logging.getLogger().removeHandler(self)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def launch(serve: Callable[[StartupReport], int], ready_timeout: float) -> int:
    """Start `serve` in a daemon; return 0 once it reported ready, 1 when its start failed."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        _become_daemon(serve, write_end)
    os.close(write_end)
    os.waitpid(child, 0)  # it leaves at once: DaemonContext's first fork
    try:
        return await_outcome(read_end, ready_timeout)
    finally:
        os.close(read_end)


def _become_daemon(serve: Callable[[StartupReport], int], write_end: int) -> None:
    """In the launcher's child: detach, run the daemon, never return."""
    import daemon  # python-daemon; only this path needs it

    status = EXIT_FATAL
    report = StartupReport(write_end)
    try:
        context = daemon.DaemonContext(
            detach_process=True, files_preserve=[write_end], working_directory="/",
            umask=0o022, signal_map={})  # the master installs its own handlers
        context.open()  # stdio is /dev/null from here on
        report.send("pid", str(os.getpid()))
        status = serve(report)
        if not report.finished:  # the master returned before it was ready
            if status == EXIT_OK:
                report.line(STOPPED_BEFORE_READY)
            report.finish(status or EXIT_FATAL)
    except ConfigError as error:
        report.line(error.one_line())
        status = EXIT_USAGE
        report.finish(status)
    except StartupError as error:
        report.line(str(error))
        report.finish(status)
    except HaltServer as halt:
        status = halt.status
        report.finish(status)
    except BaseException as error:
        report.line(logger.render(error))
        report.finish(status)
    finally:
        os._exit(status)


def await_outcome(read_end: int, timeout: float) -> int:
    """Print what the daemon forwards; return its status, or 1 on EOF or timeout."""
    deadline = time.monotonic() + timeout
    pending = b""
    daemon_pid: int | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _complain(NOT_READY_IN_TIME.format(timeout=timeout))
            if daemon_pid is not None:
                _terminate(daemon_pid)
            return EXIT_FATAL
        readable, _, _ = select.select([read_end], [], [], remaining)
        if not readable:
            continue
        data = os.read(read_end, 65536)
        if not data:
            _complain(EXITED_DURING_START)
            return EXIT_FATAL
        pending += data
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            kind, _, text = raw.decode(errors="replace").partition(" ")
            if kind == "pid":
                daemon_pid = int(text)
            elif kind == "log":
                _complain(text)
            elif kind == "status":
                status = int(text)
                if status == EXIT_OK:
                    print(f"oversipd: started (pid {daemon_pid})")
                else:
                    _complain(START_FAILED.format(status=status))
                return status


def _complain(text: str) -> None:
    print(f"oversipd: {text}", file=sys.stderr)


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
