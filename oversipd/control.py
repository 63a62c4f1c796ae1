"""The master<->worker control channel: one SOCK_SEQPACKET socketpair per worker.

A message is one packet: a pickled (kind, argument) pair.  EOF on either
end means the other process is gone.
"""

from __future__ import annotations

import pickle
import socket
from typing import Any

# master -> worker
STOP = "stop"                # argument: error flag for on_terminated
RELOAD = "reload"            # argument: the new Settings
USER_RELOAD = "user_reload"  # argument: None
RETIRE = "retire"            # argument: None; a newer generation serves: finish up, then stop
# worker -> master
STARTED = "started"
RELOADED = "reloaded"

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

    def send(self, kind: str, argument: Any = None) -> bool:
        """Send without blocking; False when the peer is gone or not reading."""
        try:
            self.sock.send(pickle.dumps((kind, argument), pickle.HIGHEST_PROTOCOL))
            return True
        except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
            return False

    def receive(self) -> list[tuple[str, Any]] | None:
        """Every message waiting now; None on EOF (the peer is gone)."""
        messages = []
        while True:
            try:
                packet = self.sock.recv(MAX_PACKET)
            except BlockingIOError:
                return messages
            except (ConnectionResetError, OSError):
                return None if not messages else messages
            if not packet:
                return None if not messages else messages
            messages.append(pickle.loads(packet))

    def close(self) -> None:
        self.sock.close()
