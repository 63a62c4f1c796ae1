"""systemd socket activation: the sockets passed in LISTEN_FDS, by their LISTEN_FDNAMES name."""

from __future__ import annotations

import os
import socket

from .logger import Logger

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed descriptors start here
UNNAMED = "unknown"      # what systemd calls a descriptor without FileDescriptorName=
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

_log = Logger("Socket activation")


def passed_sockets() -> dict[str, socket.socket]:
    """The sockets systemd passed to this process, by name; the variables are unset afterwards."""
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    names = os.environ.get("LISTEN_FDNAMES", "")
    # Unset, as sd_listen_fds(unset_environment=1) does: a program a module
    # starts must not believe the descriptors are meant for it.
    for variable in ACTIVATION_VARIABLES:
        os.environ.pop(variable, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return {}
    name_list = names.split(":") if names else []
    passed: dict[str, socket.socket] = {}
    for index in range(int(count)):
        fd = SD_LISTEN_FDS_START + index
        name = name_list[index] if index < len(name_list) else UNNAMED
        sock = _adopt(fd, name)
        if sock is None:
            continue
        if name in passed:
            _log.log_system_warn(f"systemd passed a second socket named {name!r} (fd {fd}); "
                                 "only the first is used")
            sock.close()
            continue
        passed[name] = sock
    return passed


def _adopt(fd: int, name: str) -> socket.socket | None:
    """A passed descriptor as a socket object (close-on-exec, like sd_listen_fds does)."""
    try:
        os.set_inheritable(fd, False)
        return socket.socket(fileno=fd)
    except OSError as error:
        _log.log_system_warn(f"descriptor {fd} ({name!r}) passed by systemd is not a usable "
                             f"socket ({error.strerror or error}); ignored")
        return None
