"""The listening sockets: opened by the master before the fork, inherited by every worker (SPEC §7).

The master binds each `[listen.NAME]` section (or takes the socket systemd
passed under that name) before on_initialize and before any fork, so a
bind failure is a configuration error (exit status 2) and nothing runs.
The sockets then live as long as the master: a worker that dies or
reloads never closes the kernel's listening socket, so connections wait
in its backlog (and datagrams in its buffer) until some worker takes them.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import asdict, dataclass
from typing import Any

from . import activation, reexec
from .addresses import STREAM_SCHEMES, ListenSettings
from .errors import LISTEN_RESTART_NEEDED, ConfigError
from .logger import Logger

_log = Logger("Listen")
STALE_PROBE_TIMEOUT = 1.0  # seconds: a live owner of a unix socket answers connect() at once


class ListeningSocket(socket.socket):
    """A listening socket the master owns: its backlog is the section's.

    asyncio's create_server() calls listen() again with its own default
    (100); on a socket every worker shares, that would silently replace
    the configured backlog for all of them, so listen() keeps it.
    """

    def listen(self, backlog: int | None = None) -> None:
        """Already listening with the `[listen.NAME]` backlog: nothing to do."""


@dataclass
class Listener:
    settings: ListenSettings
    sock: socket.socket
    bound_inode: int | None = None  # a unix socket file this process created (removed at exit)


_listeners: dict[str, Listener] = {}


def master_sockets() -> dict[str, socket.socket]:
    """Name -> the master's own socket of each section (not a copy)."""
    return {name: listener.sock for name, listener in _listeners.items()}


def listen_socket(name: str) -> socket.socket:
    """The `[listen.NAME]` socket, non-blocking; KeyError for an unknown name.

    Each call returns a new socket object (a dup) of the same listening
    socket: the caller owns it, and asyncio closing its server closes
    only that copy, so a module can stop and start serving again.
    """
    try:
        listener = _listeners[name]
    except KeyError:
        known = ", ".join(sorted(_listeners)) or "none"
        raise KeyError(f"no listening socket named {name!r} (configured: {known})") from None
    sock = listener.sock
    copy = ListeningSocket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
    copy.setblocking(False)
    return copy


# --- opening and closing, in the master ---------------------------------------------------

def open_listeners(sections: dict[str, ListenSettings], source: str,
                   reuseport: frozenset[str] | set[str] = frozenset()) -> None:
    """Bind every section (or adopt systemd's socket of that name); ConfigError on failure.

    The sections named in `reuseport` (UDP SIP listeners, oversipd.sip.transport.sockets)
    get SO_REUSEPORT, so that per-worker sockets can join them.
    """
    passed = activation.passed_sockets()
    opened: dict[str, Listener] = {}
    try:
        for name, spec in sections.items():
            sock = passed.pop(name, None)
            opened[name] = (_adopt(spec, sock, source) if sock is not None
                            else _bind(spec, source, name in reuseport))
    except BaseException:
        for listener in opened.values():
            _close(listener)
        for sock in passed.values():
            sock.close()
        raise
    for name, sock in passed.items():
        _log.log_system_warn(f"systemd passed a socket named {name!r} that no [listen.{name}] "
                             "section uses; closed")
        sock.close()
    _listeners.update(opened)


def close_listeners() -> None:
    """Close every socket; remove the unix socket files this process created."""
    for listener in _listeners.values():
        _close(listener)
    _listeners.clear()


def _close(listener: Listener) -> None:
    listener.sock.close()
    if listener.bound_inode is None:
        return
    path = listener.settings.path
    try:
        # Only our own file: a newer daemon may have replaced it meanwhile.
        if os.lstat(path).st_ino == listener.bound_inode:
            os.unlink(path)
    except OSError:
        pass


def _bind(spec: ListenSettings, source: str, reuseport: bool = False) -> Listener:
    where = f"listen.{spec.name}"
    if spec.scheme == "unix":
        _remove_stale_unix_socket(spec, source)
    if reuseport:
        _refuse_if_taken(spec, source)
    try:
        sock = socket.socket(spec.family, spec.type)
    except OSError as error:
        raise ConfigError(source, where, f"cannot bind {spec.address}: {_reason(error)}") from None
    bound = False
    try:
        _set_options(spec, sock)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(spec.sockaddr)
        bound = True
        if spec.type == socket.SOCK_STREAM:
            sock.listen(spec.backlog)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        if bound and spec.scheme == "unix":
            os.unlink(spec.path)  # ours, never listened on: leave no stale file behind
        raise ConfigError(source, where, f"cannot bind {spec.address}: {_reason(error)}") from None
    inode = os.lstat(spec.path).st_ino if spec.scheme == "unix" else None
    _log.log_system_info(f"{where}: listening on {_describe(sock, spec)}")
    return Listener(spec, sock, bound_inode=inode)


def _set_options(spec: ListenSettings, sock: socket.socket) -> None:
    if spec.scheme in STREAM_SCHEMES:
        # A restart must not wait for the old connections' TIME_WAIT.  Not
        # for udp: there SO_REUSEADDR would let two daemons share a port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if spec.family == socket.AF_INET6:
        # [::] means IPv6 only, as in nginx: IPv4 gets its own section.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def _refuse_if_taken(spec: ListenSettings, source: str) -> None:
    """With SO_REUSEPORT a second daemon could join our port: bind once without it to find out.

    With the options the real socket gets, SO_REUSEADDR for tcp among them:
    a connection of an earlier run still in TIME_WAIT must not pass for a
    daemon (SO_REUSEADDR never lets a second TCP listener in).
    """
    probe = socket.socket(spec.family, spec.type)
    try:
        _set_options(spec, probe)
        probe.bind(spec.sockaddr)
    except OSError as error:
        raise ConfigError(source, f"listen.{spec.name}",
                          f"cannot bind {spec.address}: {_reason(error)}") from None
    finally:
        probe.close()


def _remove_stale_unix_socket(spec: ListenSettings, source: str) -> None:
    """A socket file left by a dead run is removed; one a live process answers on is an error."""
    where = f"listen.{spec.name}"
    try:
        mode = os.lstat(spec.path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise ConfigError(source, where, f"cannot bind {spec.address}: {_reason(error)}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(source, where, f"cannot bind {spec.address}: {spec.path} exists and is not a socket")
    if _answers(spec.path):
        raise ConfigError(source, where, f"cannot bind {spec.address}: in use by a running process")
    try:
        os.unlink(spec.path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise ConfigError(source, where, f"cannot remove the stale socket {spec.path}: {_reason(error)}") from None
    _log.log_system_notice(f"{where}: removed the stale socket {spec.path} left by a previous run")


def _answers(path: str) -> bool:
    """True when some process accepts connections on the unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(STALE_PROBE_TIMEOUT)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # a full backlog or a datagram socket: someone holds it; don't steal it
    finally:
        probe.close()


def _adopt(spec: ListenSettings, sock: socket.socket, source: str) -> Listener:
    """A socket systemd passed under the section's name; it must be of the section's kind."""
    where = f"listen.{spec.name}"
    wanted_unix = spec.family == socket.AF_UNIX
    if sock.type != spec.type or (sock.family == socket.AF_UNIX) != wanted_unix:
        found = f"{_family_name(sock.family)} {_type_name(sock.type)}"
        sock.close()
        raise ConfigError(source, where, f"the socket systemd passed as {spec.name!r} is {found}, "
                                         f"but the section says {spec.address}")
    sock.setblocking(False)
    _log.log_system_info(f"{where}: using the socket passed by systemd ({_describe(sock, spec)}; "
                         "the .socket unit's address wins over the section's)")
    return Listener(spec, sock)


def _describe(sock: socket.socket, spec: ListenSettings) -> str:
    address: Any = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix://{address}"
    scheme = "udp" if sock.type == socket.SOCK_DGRAM else spec.scheme
    host = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
    return f"{scheme}://{host}:{address[1]}"


def _family_name(family: int) -> str:
    return {socket.AF_UNIX: "unix", socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}.get(family, str(family))


def _type_name(kind: int) -> str:
    return {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram"}.get(kind, str(kind))


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


# --- across the master's exec on an upgraded core (reexec.py) ---------------------------------

def handover_description() -> tuple[dict[str, Any], list[int]]:
    """Each socket by name, with its section as it was bound (a reload keeps the sockets it has)."""
    description = {name: {"fd": listener.sock.fileno(), "inode": listener.bound_inode,
                          "settings": asdict(listener.settings)}
                   for name, listener in _listeners.items()}
    return description, [entry["fd"] for entry in description.values()]


def bound_sections() -> dict[str, ListenSettings]:
    """The sections the open sockets were bound with."""
    return {name: listener.settings for name, listener in _listeners.items()}


def adopt_handed_over(description: dict[str, Any]) -> None:
    for name, entry in description.items():
        sock = socket.socket(fileno=reexec.adopt_fd(entry["fd"]))
        sock.setblocking(False)
        _listeners[name] = Listener(ListenSettings(**entry["settings"]), sock, bound_inode=entry["inode"])


reexec.register_part("listeners", handover_description, adopt_handed_over)


# --- reload ----------------------------------------------------------------------------

def warn_if_changed(old: dict[str, ListenSettings], new: dict[str, ListenSettings], log: Logger) -> None:
    """A reload keeps the sockets it has: say so when [listen.*] changed."""
    if old == new:
        return
    changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
    log.log_system_warn(f"[listen.*] changed ({', '.join('listen.' + n for n in changed)}): "
                        f"{LISTEN_RESTART_NEEDED}")
