"""The SIP servers of `make bench-sip`: each one a private process tree on loopback ports.

Kamailio runs from Debian's package in the foreground (-DD -E) with a
config from bench/kamailio/, a runtime directory and pid file of its own;
oversipd runs from the bench virtualenv with bench/oversipd-sip.conf and a
server script.  Either is ready when it answers a SIP request on its UDP
port (and accepts on its TCP port, for a proxy), and either can be
restarted between runs: an overloaded run leaves transactions behind that
would retransmit into the next one (see PITFALLS.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from .figures import cpu_seconds

BENCH = Path(__file__).resolve().parent
KAMAILIO_CONFIGS = {"options": BENCH / "kamailio" / "options.cfg", "proxy": BENCH / "kamailio" / "proxy.cfg",
                    "kemi": BENCH / "kamailio" / "kemi.cfg"}
OVERSIPD_CONF_TEMPLATE = BENCH / "oversipd-sip.conf"
OVERSIPD_PROXY_CONF_TEMPLATE = BENCH / "oversipd-sip-proxy.conf"
OVERSIPD_PROXY_SCRIPT = BENCH.parent / "examples" / "proxy_server.py"
OVERSIPD_OPTIONS_SCRIPT = BENCH / "oversipd_options.py"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
HOST = "127.0.0.1"


def port_free(port: int) -> bool:
    """Neither a UDP socket nor a TCP listener holds the port on loopback (connections of a
    stopped server left in TIME_WAIT do not count: the next one binds with SO_REUSEADDR)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError:
                return False
    return True


class ServerError(RuntimeError):
    """A server that would not start; the message says which and why."""


class SipServer:
    """One server under test: started, probed for readiness, measured, stopped."""

    def __init__(self, name: str, role: str, port: int, workdir: Path) -> None:
        self.name = name
        self.role = role            # "options" or "proxy"
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # --- what a subclass provides ------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        """Write whatever the server needs in its directory before a start."""

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        # Kamailio binds with SO_REUSEADDR: next to a stray server on its port it
        # would start, and share the datagrams with it.
        if not port_free(self.port):
            raise ServerError(f"{self.name}: port {self.port} is in use (a server left from another run?); "
                              "pick others with --base-port")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.starts += 1
        with open(self.workdir / "server.log", "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=self.environment(),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        try:
            self.wait_ready()
        except ServerError:
            self.stop()
            raise

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.answers_udp():
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"{self.name} exited at start (status {self.process.returncode}); "
                                  f"see {self.workdir / 'server.log'}")
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} did not answer on udp:{HOST}:{self.port} "
                                  f"within {READY_TIMEOUT:g} s; see {self.workdir / 'server.log'}")
        if self.role == "proxy":
            while not self.accepts_tcp():
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.name} does not accept on tcp:{HOST}:{self.port}")
                time.sleep(0.05)

    def answers_udp(self) -> bool:
        """Any response to an OPTIONS with Max-Forwards 0: a proxy answers 483 rather than forward it."""
        branch = f"z9hG4bKready{os.getpid()}{time.monotonic_ns()}"
        request = (f"OPTIONS sip:ready@{HOST}:{self.port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {HOST}:{{port}};branch={branch}\r\n"
                   f"From: <sip:bench@{HOST}>;tag=ready\r\nTo: <sip:ready@{HOST}:{self.port}>\r\n"
                   f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            probe.settimeout(0.2)
            probe.sendto(request.replace("{port}", str(probe.getsockname()[1])).encode(), (HOST, self.port))
            try:
                return probe.recv(65535).startswith(b"SIP/2.0 ")
            except OSError:
                return False

    def accepts_tcp(self) -> bool:
        try:
            socket.create_connection((HOST, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """TERM the master and wait; KILL the whole group if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # --- what is measured -------------------------------------------------------

    def processes(self) -> list[psutil.Process]:
        """The master and every process below it (Kamailio's children, oversipd's workers)."""
        assert self.process is not None
        master = psutil.Process(self.process.pid)
        return [master, *master.children(recursive=True)]

    def cpu_ns(self) -> dict[int, int]:
        """CPU time so far (/proc/PID/schedstat, ns) of each of its processes, by pid."""
        times = {}
        for process in self.processes():
            try:
                times[process.pid] = round(cpu_seconds(process) * 1e9)
            except psutil.Error:
                pass  # ended meanwhile
        return times

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Kamailio(SipServer):
    """Debian's kamailio; allocator "" is the package's default (qm), or e.g. "tlsf" (-x).

    Shared memory (-m) is 1 GB: tm keeps every transaction a few seconds
    after it ended, and at thousands of calls/s 256 MB ran out ("could not
    allocate shared memory", 500 upstream) before the CPU did.
    """

    binary = "kamailio"

    def __init__(self, name: str, role: str, port: int, workdir: Path, allocator: str = "",
                 shm_mb: int = 1024, pkg_mb: int = 32, kemi: bool = False) -> None:
        super().__init__(name, role, port, workdir)
        self.allocator = allocator
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb   # the same private pool for every Kamailio (KEMI's Python needs more than 8 MB)
        self.kemi = kemi       # the routes in Python: bench/kamailio/kemi.cfg and kemi_ROLE.py

    def config(self) -> Path:
        return KAMAILIO_CONFIGS["kemi" if self.kemi else self.role]

    def defines(self) -> list[str]:
        """-A options: the config's preprocessor defines (KEMI: its script)."""
        if self.kemi:
            return ["-A", f'KEMI_SCRIPT="{BENCH / "kamailio" / f"kemi_{self.role}.py"}"']
        return []

    def command(self) -> list[str]:
        listen = ["-l", f"udp:{HOST}:{self.port}"]
        if self.role == "proxy":
            listen += ["-l", f"tcp:{HOST}:{self.port}"]
        return [self.binary, "-f", str(self.config()), *self.defines(), "-DD", "-E",
                "-Y", str(self.workdir), "-P", str(self.workdir / "kamailio.pid"), "-w", str(self.workdir),
                "-m", str(self.shm_mb), "-M", str(self.pkg_mb), *listen,
                *(["-x", self.allocator] if self.allocator else [])]


class Oversipd(SipServer):
    """oversipd with `workers` workers, bench/oversipd-sip.conf filled in, and a server script."""

    def __init__(self, name: str, role: str, port: int, workdir: Path, binary: Path, workers: int,
                 script: Path, conf_template: Path = OVERSIPD_CONF_TEMPLATE) -> None:
        super().__init__(name, role, port, workdir)
        self.binary = binary
        self.workers = workers
        self.script = script
        self.conf_template = conf_template

    def prepare(self) -> None:
        # oversipd refuses a group- or world-writable server script or directory
        # (StrictModes), whatever the umask or checkout it comes from.
        os.chmod(self.workdir, 0o755)
        script = self.workdir / "server.py"
        script.write_bytes(self.script.read_bytes())
        os.chmod(script, 0o644)
        conf = self.conf_template.read_text()
        for token, value in (("@PORT@", str(self.port)), ("@WORKERS@", str(self.workers)),
                             ("@SCRIPT@", str(script))):
            conf = conf.replace(token, value)
        (self.workdir / "oversipd.conf").write_text(conf)

    def command(self) -> list[str]:
        return [str(self.binary), "run", "-c", str(self.workdir / "oversipd.conf")]
