"""The master's pid file: created without following symlinks, locked, removed on exit.

The flock makes two masters starting at once exclude each other; the pid
written in the file lets `oversipd reload|stop|status` find the master.
A file whose pid is no longer alive is stale and replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import ALREADY_RUNNING, StartupError

MODE = 0o644


def read_pid(path: Path) -> int | None:
    """The pid recorded in `path`, or None when the file is absent or holds no pid."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(64).decode("ascii", "replace").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] == b"Z"  # the state follows the command name


def running_pid(path: Path) -> int | None:
    """The pid of the live process recorded in `path`; None when none runs."""
    pid = read_pid(path)
    return pid if pid is not None and pid_alive(pid) else None


class PidFile:
    """One process's claim on a pid file; `acquire` then `release`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Create (or take over a stale) pid file holding our pid; StartupError otherwise."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(ALREADY_RUNNING.format(pid=read_pid(self.path) or "unknown",
                                                      path=self.path)) from None
        # Locked: no oversipd master holds this file.  A live pid in it
        # still wins (a master of another version, a copy of the file), so
        # that we never take over from a running daemon.
        recorded = read_pid(self.path)
        if recorded is not None and recorded != os.getpid() and pid_alive(recorded):
            os.close(fd)
            raise StartupError(ALREADY_RUNNING.format(pid=recorded, path=self.path))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        try:
            return os.open(self.path, flags, MODE)
        except OSError as error:
            why = "is a symbolic link; refused" if error.errno == errno.ELOOP else error.strerror
            raise StartupError(f"{self.path}: cannot create the pid file: {why}") from None

    def release(self) -> None:
        """Remove the file if it is still ours, and drop the lock."""
        if self.fd is None:
            return
        try:
            if self._still_ours():
                os.unlink(self.path)
        except OSError:
            pass  # nothing more we can do on the way out
        finally:
            os.close(self.fd)
            self.fd = None

    def _still_ours(self) -> bool:
        """Same inode as the one we locked, with our pid in it (not replaced behind us)."""
        assert self.fd is not None
        ours = os.fstat(self.fd)
        try:
            there = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        same_file = (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino)
        return same_file and read_pid(self.path) == os.getpid()


@contextlib.contextmanager
def held(path: Path | None) -> Iterator[PidFile | None]:
    """Hold the pid file at `path` (none when `path` is None) for the duration."""
    if path is None:
        yield None
        return
    pid_file = PidFile(path)
    pid_file.acquire()
    try:
        yield pid_file
    finally:
        pid_file.release()
