"""SPEC §7: the master binds the [listen.*] sockets before the fork; workers inherit them."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import sys
from pathlib import Path

import pytest

from oversipd.errors import EXIT_USAGE, LISTEN_RESTART_NEEDED
from oversipd.testing import Daemon

from listen_helpers import STATUS_SOURCE, free_port, health, http_get, listen_table

# Records, in the master and in every worker, what listen_socket() returns.
PROBE = """
import os
import oversipd
from oversipd import SystemCallbacks, SystemEvents
from oversipd.testing import record

def describe(name):
    sock = oversipd.listen_socket(name)
    try:
        return {"inode": os.fstat(sock.fileno()).st_ino, "blocking": sock.getblocking(),
                "family": int(sock.family), "type": int(sock.type)}
    finally:
        sock.close()

def unknown_name():
    try:
        oversipd.listen_socket("no-such-section")
    except KeyError as error:
        return "KeyError: " + str(error)
    return "no error"

def everything():
    return {name: describe(name) for name in oversipd.config.listen}

@SystemEvents.on_initialize
def in_master():
    record("sockets", sockets=everything())

@SystemCallbacks.on_started
def in_worker():
    record("sockets", sockets=everything(), unknown=unknown_name())

@SystemCallbacks.on_reload
def after_reload():
    record("reloaded", unknown=unknown_name(), sections=sorted(oversipd.config.listen))
"""


def start_failure(daemon: Daemon, expected: str) -> int:
    """Start a daemon that must fail with `expected` in its log; its exit status."""
    daemon.start(wait=False)
    status = daemon.wait_exit()
    daemon.wait_log(expected)
    assert "Traceback" not in daemon.log_text()
    return status


def assert_nothing_started(daemon: Daemon) -> None:
    assert daemon.find("sockets") == [] and daemon.find("serving") == []


def test_workers_inherit_the_sockets_the_master_bound(oversipd_daemon, tmp_path):
    tcp, udp, tcp6 = free_port("tcp"), free_port("udp"), free_port("tcp")
    unix_path = str(tmp_path / "s.sock")
    daemon = oversipd_daemon(
        server_script=PROBE, core={"workers": 2},
        extra_tables={"listen.tcp": listen_table(f"tcp://127.0.0.1:{tcp}", backlog=64),
                      "listen.udp": listen_table(f"udp://127.0.0.1:{udp}"),
                      "listen.tcp6": listen_table(f"tcp://[::1]:{tcp6}"),
                      "listen.unix": listen_table(f"unix://{unix_path}")})
    records = daemon.wait_events("sockets", count=3)
    master = next(r for r in records if r["role"] == "master")["sockets"]
    workers = [r for r in records if r["role"] == "worker"]
    assert {w["worker"] for w in workers} == {1, 2}
    for worker in workers:
        assert worker["sockets"] == master  # the very same kernel sockets (inodes)
        assert worker["unknown"].startswith("KeyError")
    assert {name: (s["family"], s["type"]) for name, s in master.items()} == {
        "tcp": (socket.AF_INET, socket.SOCK_STREAM), "udp": (socket.AF_INET, socket.SOCK_DGRAM),
        "tcp6": (socket.AF_INET6, socket.SOCK_STREAM), "unix": (socket.AF_UNIX, socket.SOCK_STREAM)}
    assert not any(s["blocking"] for s in master.values())

    # A respawned worker gets the same sockets again.
    os.kill(daemon.worker_pids()[1], signal.SIGKILL)
    respawned = daemon.wait_events("sockets", count=4)[-1]
    assert respawned["worker"] == 1 and respawned["sockets"] == master
    assert daemon.stop() == 0
    assert not os.path.exists(unix_path)  # the master removes the socket file it made


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_an_address_in_use_exits_2_naming_section_and_address(oversipd_daemon, kind):
    port = free_port(kind)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", port))
    if kind == "tcp":
        holder.listen(1)
    address = f"{kind}://127.0.0.1:{port}"
    daemon = oversipd_daemon(start=False, server_script=PROBE,
                             extra_tables={"listen.web": listen_table(address)})
    try:
        status = start_failure(daemon, f"listen.web: cannot bind {address}: Address already in use")
    finally:
        holder.close()
    assert status == EXIT_USAGE
    assert_nothing_started(daemon)


def test_an_address_not_on_this_machine_exits_2(oversipd_daemon):
    address = "tcp://192.0.2.1:22999"  # TEST-NET-1: never a local address
    daemon = oversipd_daemon(start=False, server_script=PROBE,
                             extra_tables={"listen.web": listen_table(address)})
    assert start_failure(daemon, f"listen.web: cannot bind {address}") == EXIT_USAGE
    assert_nothing_started(daemon)


def test_bad_syntax_exits_2_naming_section_and_address(oversipd_daemon):
    daemon = oversipd_daemon(start=False, server_script=PROBE,
                             extra_tables={"listen.web": listen_table("tcp://localhost:22001")})
    assert start_failure(daemon, "listen.web.address: 'tcp://localhost:22001'") == EXIT_USAGE
    assert_nothing_started(daemon)


def test_a_stale_unix_socket_is_replaced(oversipd_daemon, tmp_path):
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody answers: what a killed daemon leaves behind
    daemon = oversipd_daemon(modules={"status": STATUS_SOURCE}, extra_tables={"listen.status": listen_table(f"unix://{path}")})
    daemon.wait_log(f"removed the stale socket {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(15)
        client.connect(str(path))
        client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 200 OK")
    assert daemon.stop() == 0
    assert not path.exists()


def test_a_unix_socket_of_a_live_process_is_an_error(oversipd_daemon, tmp_path):
    path = tmp_path / "live.sock"
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner.bind(str(path))
    owner.listen(1)
    daemon = oversipd_daemon(start=False, server_script=PROBE,
                             extra_tables={"listen.web": listen_table(f"unix://{path}")})
    try:
        status = start_failure(daemon, f"listen.web: cannot bind unix://{path}: in use by a running process")
    finally:
        owner.close()
    assert status == EXIT_USAGE
    assert path.exists()  # not ours to remove
    assert_nothing_started(daemon)


def test_a_unix_path_that_is_not_a_socket_is_an_error(oversipd_daemon, tmp_path):
    path = tmp_path / "file.sock"
    path.write_text("precious")
    daemon = oversipd_daemon(start=False, server_script=PROBE,
                             extra_tables={"listen.web": listen_table(f"unix://{path}")})
    assert start_failure(daemon, f"listen.web: cannot bind unix://{path}: {path} exists and is not a socket") == EXIT_USAGE
    assert path.read_text() == "precious"


def test_a_reload_that_changes_listen_keeps_the_sockets(oversipd_daemon):
    old_port, new_port = free_port("tcp"), free_port("tcp")
    daemon = oversipd_daemon(modules={"status": STATUS_SOURCE}, server_script=PROBE,
                             extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{old_port}")})
    while new_port == old_port:
        new_port = free_port("tcp")
    daemon.extra_tables = {"listen.status": listen_table(f"tcp://127.0.0.1:{new_port}"),
                           "listen.added": listen_table(f"udp://127.0.0.1:{new_port}")}
    daemon.write_conf()
    daemon.signal(signal.SIGHUP)
    daemon.wait_notification("READY=1", count=2)
    line = daemon.wait_log(LISTEN_RESTART_NEEDED)[0]
    assert "listen.added, listen.status" in line
    reloaded = daemon.wait_events("reloaded")[0]
    assert reloaded["sections"] == ["added", "status"] and reloaded["unknown"].startswith("KeyError")
    assert health(old_port)["reloads"] == 1  # still served on the socket bound at start
    with pytest.raises(ConnectionRefusedError):
        http_get(new_port)
    assert daemon.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_workers_that_drop_privileges_serve_the_masters_sockets(oversipd_daemon):
    port = free_port("tcp")
    # No record() here: an unprivileged worker cannot reach the test's event socket.
    daemon = oversipd_daemon(modules={"status": STATUS_SOURCE}, core={"user": "nobody", "workers": 2},
                             extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{port}")})
    import psutil
    uids = {psutil.Process(pid).uids().real for pid in daemon.worker_pids().values()}
    assert uids == {pwd.getpwnam("nobody").pw_uid}
    assert health(port)["worker"] in (1, 2)
    assert daemon.stop() == 0


# --- systemd socket activation -----------------------------------------------------------

# Plays systemd: binds the sockets, puts them at fd 3, 4, ... and execs oversipd
# with LISTEN_PID (its own pid: exec keeps it), LISTEN_FDS and LISTEN_FDNAMES.
ACTIVATE = """
import fcntl, json, os, socket, sys
specs = json.loads(sys.argv[1])
kept = []
for name, kind, port in specs:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    if kind == "tcp":
        sock.listen(64)
    kept.append(fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 100))
for index, fd in enumerate(kept):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(specs)),
                  LISTEN_FDNAMES=":".join(name for name, _, _ in specs))
os.execv(sys.executable, [sys.executable, "-m", "oversipd", *sys.argv[2:]])
"""


class ActivatedDaemon(Daemon):
    """A Daemon started the way systemd starts a socket-activated service."""

    passed: list[tuple[str, str, int]] = []

    def command(self, *args: str) -> list[str]:
        if args and args[0] == "run":
            import json
            return [sys.executable, "-c", ACTIVATE, json.dumps(self.passed), *args]
        return super().command(*args)


@pytest.fixture
def activated(tmp_path):
    made = []

    def make(passed, **options) -> ActivatedDaemon:
        directory = tmp_path / f"activated{len(made)}"
        directory.mkdir(mode=0o755)
        daemon = ActivatedDaemon(directory, **options)
        daemon.passed = passed
        made.append(daemon)
        return daemon

    tmp_path.chmod(0o755)
    yield make
    for daemon in made:
        daemon.cleanup()


def test_a_socket_passed_by_systemd_is_used_instead_of_binding(activated):
    section_port, passed_port, stray_port = free_port("tcp"), free_port("tcp"), free_port("udp")
    daemon = activated([["status", "tcp", passed_port], ["stray", "udp", stray_port]],
                       modules={"status": STATUS_SOURCE},
                       extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{section_port}")})
    daemon.start()
    daemon.wait_log("listen.status: using the socket passed by systemd")
    daemon.wait_log("systemd passed a socket named 'stray' that no [listen.stray] section uses")
    assert health(passed_port)["worker"] == 1
    if section_port != passed_port:
        with pytest.raises(ConnectionRefusedError):
            http_get(section_port)
    assert daemon.stop() == 0


def test_a_passed_socket_of_the_wrong_kind_exits_2(activated):
    port = free_port("udp")
    daemon = activated([["status", "udp", port]], modules={"status": STATUS_SOURCE},
                       extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{port}")})
    expected = ("listen.status: the socket systemd passed as 'status' is IPv4 datagram, "
                f"but the section says tcp://127.0.0.1:{port}")
    assert start_failure(daemon, expected) == EXIT_USAGE


def test_activation_variables_for_another_process_are_ignored(oversipd_daemon):
    port = free_port("tcp")
    daemon = oversipd_daemon(modules={"status": STATUS_SOURCE}, start=False,
                             extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{port}")})
    daemon.env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "status"}
    daemon.start()
    daemon.wait_log(f"listen.status: listening on tcp://127.0.0.1:{port}")
    assert health(port)["worker"] == 1
    assert daemon.stop() == 0



def test_check_validates_listen_but_binds_nothing(oversipd_daemon):
    port = free_port("tcp")
    holder = socket.create_server(("127.0.0.1", port))  # a running daemon would hold it
    try:
        daemon = oversipd_daemon(start=False, modules={"status": STATUS_SOURCE},
                                 extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{port}")})
        assert daemon.run_command("check", "-c", str(daemon.conf_path)).returncode == 0
        daemon.extra_tables = {"listen.status": listen_table("tcp://127.0.0.1:http")}
        daemon.write_conf()
        result = daemon.run_command("check", "-c", str(daemon.conf_path))
    finally:
        holder.close()
    assert result.returncode == EXIT_USAGE
    assert "listen.status.address: 'tcp://127.0.0.1:http'" in result.stderr
