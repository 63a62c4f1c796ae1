"""Running an upgraded oversipd core on reload: the master re-executes itself, PID unchanged (SPEC §5).

Module code is imported anew inside the master (generations.py); oversipd
itself cannot be: its classes are the master's own state.  When the
installed core differs from the running one, a reload therefore
  1. checks the new core: `python -P -m oversipd check` with the master's
     configuration, as a child (`start_check`); a failure refuses the reload;
  2. hands over what must outlive the old image (`collect`): descriptors
     whose close-on-exec flag is cleared, described in a small JSON
     document in the HANDOVER_ENV environment variable;
  3. `os.execv`s the same command line with the signals the master handles
     blocked: a signal sent meanwhile stays pending until the new image has
     its handlers, instead of killing it with the default action.
The new image (cli.resume) takes the hand-over (`pending`), adopts the
descriptors, imports the new code, runs on_initialize and forks the next
generation; the handed-over workers retire once it serves (swap.py, upgrade.py).

What is handed over: the parts other layers register (`register_part`:
the listening sockets here; a SIP layer adds the per-slot UDP sockets the
master keeps), the pid file's descriptor (its flock lives on the open
file, so it survives), the old workers (slot, pid, generation, control
channel), the counters and the target worker count.  Not handed over: the
heartbeat board (an anonymous mapping, gone with the old image; the
handed-over workers are not heartbeat-monitored while they retire, and
graceful_timeout bounds them), the notify socket (re-created from
NOTIFY_SOCKET), the command line (the same argv is executed again).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

HANDOVER_ENV = "OVERSIPD_HANDOVER"
FORMAT = 1
# -P: the working directory is not put in front of sys.path, so the
# installed oversipd runs, not a checkout that happens to be the cwd.
INTERPRETER = (sys.executable, "-P", "-m", "oversipd")
# The check's output kept for the log line: its last lines say what failed.
CHECK_OUTPUT_LIMIT = 64 * 1024
TRACEBACK_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


class HandoverError(Exception):
    """The hand-over description is unusable (another format, a descriptor missing)."""


# --- parts other layers hand over -------------------------------------------------------

@dataclass(frozen=True)
class HandoverPart:
    """Descriptors a layer keeps in the master that must outlive the exec.

    `collect()` returns a JSON-serialisable description and the descriptors
    it names; `restore(description)` runs in the new image before any
    module code is imported, and must make those descriptors close-on-exec
    again (`adopt_fd`).
    """

    collect: Callable[[], tuple[Any, list[int]]]
    restore: Callable[[Any], None]


_parts: dict[str, HandoverPart] = {}


def register_part(name: str, collect: Callable[[], tuple[Any, list[int]]],
                  restore: Callable[[Any], None]) -> None:
    """Hand `name`'s descriptors over at the next exec (one registration per name)."""
    _parts[name] = HandoverPart(collect, restore)


def adopt_fd(fd: int) -> int:
    """A descriptor received across the exec: close-on-exec again (nothing the master starts inherits it)."""
    try:
        os.set_inheritable(fd, False)
    except OSError as error:
        raise HandoverError(f"descriptor {fd} was not handed over: {error.strerror}") from None
    return fd


# --- the description --------------------------------------------------------------------

@dataclass
class HandedWorker:
    slot: int
    pid: int
    generation: int
    fd: int              # the master's end of its control channel
    stopping: bool       # already asked to stop (TTOU, a failed generation): not asked again


@dataclass
class Handover:
    argv: list[str]                     # the oversipd command line, executed again (for ps; not re-read)
    conf: str                           # the configuration file, absolute
    overrides: dict[str, Any]           # settings.Overrides: absolute paths, whatever the cwd now is
    insecure_modules: bool
    generation: int                     # the serving generation
    target_workers: int
    reloads: int
    respawns: int
    daemonized: bool                    # the log goes to syslog
    reason: str
    core_version: str | None            # the installed version that asked for the exec
    reload_pending: bool = False        # a HUP came during the check: one more reload after the swap
    new_generation_pending: bool = False  # ... a SIGUSR2
    pid_file: dict[str, Any] | None = None   # {"path": ..., "fd": ...}
    workers: list[HandedWorker] = field(default_factory=list)
    parts: dict[str, Any] = field(default_factory=dict)
    fds: list[int] = field(default_factory=list)   # every descriptor above

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Handover":
        try:
            data = json.loads(text)
            if data.pop("format", None) != FORMAT:
                raise HandoverError(f"hand-over format {data.get('format')!r}, expected {FORMAT}")
            data["workers"] = [HandedWorker(**worker) for worker in data["workers"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError) as error:
            raise HandoverError(f"unreadable hand-over: {error}") from None


def collect_parts() -> tuple[dict[str, Any], list[int]]:
    """Every registered part's description, and the descriptors they name."""
    descriptions, fds = {}, []
    for name, part in _parts.items():
        descriptions[name], part_fds = part.collect()
        fds += part_fds
    return descriptions, fds


def restore_parts(handover: Handover) -> None:
    for name, description in handover.parts.items():
        part = _parts.get(name)
        if part is None:
            raise HandoverError(f"no layer takes the hand-over part {name!r}")
        part.restore(description)


# --- exec -------------------------------------------------------------------------------

def command(argv: Sequence[str]) -> list[str]:
    return [*INTERPRETER, *argv]


def keep_stdio() -> None:
    """Descriptors 0-2 across the exec: python-daemon leaves its /dev/null ones close-on-exec."""
    for fd in (0, 1, 2):
        try:
            os.set_inheritable(fd, True)
        except OSError:  # closed: the new image's sys.stderr would be None
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def unread_signals(wakeup_fd: int) -> set[int]:
    signums: set[int] = set()
    while True:
        try:
            data = os.read(wakeup_fd, 4096)
        except BlockingIOError:
            return signums
        if not data:
            return signums
        signums.update(data)


def exec_new_core(handover: Handover, blocked_signals: Sequence[int], wakeup_fd: int) -> NoReturn:
    """Replace this process's image by the installed oversipd; OSError (nothing changed) when exec fails."""
    keep_stdio()
    for fd in handover.fds:
        os.set_inheritable(fd, True)
    os.environ[HANDOVER_ENV] = handover.to_json()
    # Pending, not lost: the new image unblocks them once its handlers are in place.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked_signals)
    # A signal caught since the master last read its wakeup pipe is a byte
    # in that pipe, which the exec closes: make it pending again instead.
    for signum in unread_signals(wakeup_fd):
        os.kill(os.getpid(), signum)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, command(handover.argv))
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.environ.pop(HANDOVER_ENV, None)
        for fd in handover.fds:
            os.set_inheritable(fd, False)
        raise


def pending() -> Handover | None:
    """The hand-over this process was executed with (the variable is unset: children must not see it)."""
    text = os.environ.pop(HANDOVER_ENV, None)
    if text is None:
        return None
    handover = Handover.from_json(text)
    for fd in handover.fds:
        adopt_fd(fd)
    return handover


# --- the check, with the new core ---------------------------------------------------------

def check_command(conf: Path, modules_dir: Path | None, insecure: bool) -> list[str]:
    args = ["check", "-c", str(conf)]
    if modules_dir is not None:
        args += ["--modules-dir", str(modules_dir)]
    if insecure:
        args.append("--insecure-modules")
    return command(args)


def start_check(argv: list[str], close_fds: list[int]) -> tuple[int, int]:
    """Run `argv` (the new core's check) as a child; return (pid, read end of its stdout+stderr)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            from .forking import close_inherited, reset_signals_after_fork

            reset_signals_after_fork()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            close_inherited(close_fds)  # the control channels' master ends (PITFALLS)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(write_end)
    os.set_blocking(read_end, False)
    return pid, read_end


def check_failure_line(output: bytes, exit_code: int) -> str:
    """One line for the log: where the new core's check failed (file, line) and its last words."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    frames = [match for match in map(TRACEBACK_FRAME.match, lines) if match]
    status = f"exit status {exit_code}" if exit_code >= 0 else f"killed by {signal.Signals(-exit_code).name}"
    prefix = f"{frames[-1]['file']}, line {frames[-1]['line']}: " if frames else ""
    return f"oversipd check with the upgraded core failed ({status}): {prefix}{last}"
