"""The master<->worker control channel: one SOCK_SEQPACKET socketpair per worker.

A message is one packet: a pickled (kind, argument) pair, which may carry
one descriptor (SCM_RIGHTS: a worker hands the master a connection to
keep, oversipd.kept).  EOF on either end means the other process is gone.
"""

from __future__ import annotations

import os
import pickle
import socket
from typing import Any

# master -> worker
STOP = "stop"                # argument: error flag for on_terminated
RELOAD = "reload"            # argument: the new Settings
USER_RELOAD = "user_reload"  # argument: None
RETIRE = "retire"            # argument: None; a newer generation serves: finish up, then stop
ADOPT = "adopt"              # argument: (key, unread bytes); the packet carries a connection to read on
# worker -> master
STARTED = "started"
RELOADED = "reloaded"
DEGRADED = "degraded"        # argument: names of the resources the worker could not open (() = none)
KEEP = "keep"                # argument: a key; the packet carries the descriptor to keep
RELEASE = "release"          # argument: the key of a kept descriptor, which the master closes
HAND_OVER = "hand_over"      # argument: (key, unread bytes); a retiring worker's kept connection for its successor

MAX_PACKET = 1 << 20


class Channel:
    """One end of a control socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    @classmethod
    def pair(cls) -> tuple["Channel", "Channel"]:
        """(master end, worker end)."""
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(master_end), cls(worker_end)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: str, argument: Any = None, fd: int | None = None) -> bool:
        """Send without blocking; False when the peer is gone or not reading."""
        packet = pickle.dumps((kind, argument), pickle.HIGHEST_PROTOCOL)
        try:
            if fd is None:
                self.sock.send(packet)
            else:
                socket.send_fds(self.sock, [packet], [fd])
            return True
        except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
            return False

    def receive(self) -> list[tuple[str, Any, socket.socket | None]] | None:
        """Every message waiting now, as (kind, argument, the descriptor it carried or None); None on EOF.

        A message sent with a descriptor comes without one when the receiver
        had no descriptor left (EMFILE: the kernel drops it): check it.
        """
        messages: list[tuple[str, Any, socket.socket | None]] = []
        while True:
            try:
                # CLOEXEC: a received descriptor must not leak into an exec'd image.
                packet, fds, _, _ = socket.recv_fds(self.sock, MAX_PACKET, 1, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return messages
            except (ConnectionResetError, OSError):
                return None if not messages else messages
            if not packet:
                for fd in fds:
                    os.close(fd)
                return None if not messages else messages
            kind, argument = pickle.loads(packet)
            messages.append((kind, argument, socket.socket(fileno=fds[0]) if fds else None))

    def close(self) -> None:
        self.sock.close()
