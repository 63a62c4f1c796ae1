"""sd_notify(3) from the master: readiness, reloads, stopping, watchdog, status."""

from __future__ import annotations

import os
import socket
import time


SEND_TIMEOUT = 1.0


class Notifier:
    """Sends sd_notify datagrams when NOTIFY_SOCKET is set; otherwise does nothing."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address
        self.sock: socket.socket | None = None
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A datagram socket's queue is short (net.unix.max_dgram_qlen,
            # often 10): a listener that falls behind must not wedge the
            # master, so a notification waits at most this long.
            self.sock.settimeout(SEND_TIMEOUT)
        self.watchdog_interval = self._watchdog_interval()

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def _watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    def send(self, *lines: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd gone or not listening: nothing to tell

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self, status: str) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def filenos(self) -> list[int]:
        """The master's notify socket: systemd listens to the master alone."""
        return [self.sock.fileno()] if self.sock is not None else []
