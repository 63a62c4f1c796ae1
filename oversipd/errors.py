"""Exit statuses and the exception types that carry them to the one place that exits."""

from __future__ import annotations

import json
import re

# Exit statuses of the `oversipd` command (SPEC §4).  Users and service
# managers act on these, so they never change meaning.
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # `status` when no daemon runs (LSB convention)

# A worker leaves with this status after Launcher.fatal: the master then
# brings the whole daemon down instead of respawning the slot.
WORKER_EXIT_FATAL = 3
# A worker leaves with this status when an exception escaped its reactor.
WORKER_EXIT_CRASHED = 1

CRASH_LOOP_MESSAGE = "crash loop"
EXITING_WITH_ERROR = "exiting with error status"
LISTEN_RESTART_NEEDED = "a restart is needed; keeping the current sockets"
ALREADY_RUNNING = "{path}: already running (pid {pid})"
NOT_RUNNING = "not running (pid file {path})"
NO_PID_FILE = "no pid file: set core.pid_file in {conf} or give --pid-file"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(*parts: str) -> str:
    """A dotted key as TOML writes it: a part that is not a bare key is quoted and escaped.

    A key can hold any character (`"a\\nb" = 1`); quoting keeps the message
    on one line and an empty key visible.
    """
    return ".".join(part if _BARE_KEY.fullmatch(part) else json.dumps(part) for part in parts)


class ConfigError(Exception):
    """A user mistake in the configuration or the command line."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = self.source if self.key is None else f"{self.source}: {self.key}"
        return f"{where}: {self.problem}"


class StartupError(Exception):
    """The daemon cannot start for a reason other than its configuration (exit 1).

    Carries one line for the operator: the pid file is taken, cannot be
    created, the daemonized master failed before it was ready...
    """


class HaltServer(BaseException):
    """Unwinds the master to the CLI, which exits with `status`.

    A BaseException so that a module's `except Exception` around
    `Launcher.fatal` cannot swallow the daemon's death.
    """

    def __init__(self, reason: str, status: int = EXIT_FATAL) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)
