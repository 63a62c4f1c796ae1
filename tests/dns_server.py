"""A private DNS server for the tests: Debian's dnsmasq on 127.0.0.1, serving the records a test gives.

    def test_something(dns_server):
        zone = DnsZone().srv("_sip._udp.example.test", "pbx.example.test", 5070) \\
                        .host("pbx.example.test", "127.0.0.1")
        server = dns_server(zone)
        ... [dns] nameservers = [server.nameserver] ...

Every name under the zone's top-level domains that has no record is
NXDOMAIN (dnsmasq's --local); `queries()` tells which queries arrived, so
a test can see that an answer came from a cache and not from the server.
"""

from __future__ import annotations

import getpass
import grp
import itertools
import os
import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import dns.message
import dns.query
import pytest

from listen_helpers import free_port
from oversipd.testing import _Inbox

DNSMASQ = "/usr/sbin/dnsmasq"
START_TIMEOUT = 15.0
QUERY_LOG = re.compile(r"query\[(\w+)\] (\S+) from ")
MARKER_DOMAIN = "sync.dnsmasq.test"
PORT_ATTEMPTS = 5


@dataclass
class DnsZone:
    """The records to serve; names without the final dot, TTL for all of them."""

    ttl: int = 60
    options: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def naptr(self, name: str, order: int, preference: int, service: str, replacement: str,
              flags: str = "S") -> "DnsZone":
        self.names.add(name)
        self.options.append(f"--naptr-record={name},{order},{preference},{flags},{service},,{replacement}")
        return self

    def srv(self, name: str, target: str, port: int, priority: int = 0, weight: int = 0) -> "DnsZone":
        self.names.add(name)
        self.options.append(f"--srv-host={name},{target},{port},{priority},{weight}")
        return self

    def host(self, name: str, *addresses: str) -> "DnsZone":
        """A and AAAA records of `name` (one record per address)."""
        self.names.add(name)
        self.options += [f"--host-record={name},{address}" for address in addresses]
        return self

    def local_domains(self) -> list[str]:
        """The top-level domains answered here (NXDOMAIN included), never forwarded."""
        return sorted({name.rsplit(".", 1)[-1] for name in self.names} | {"test"})


class DnsServer:
    """A running dnsmasq; `nameserver` is the "IP:PORT" for [dns] nameservers."""

    def __init__(self, zone: DnsZone, directory: Path) -> None:
        self.zone = zone
        self.directory = directory
        self.log = _Inbox()
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._markers = itertools.count()
        self._reader: threading.Thread | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dns_table(self, timeout: float = 2.0) -> dict[str, object]:
        """The `[dns]` table of an oversipd that asks this server (for `extra_tables`)."""
        return {"nameservers": [self.nameserver], "timeout": timeout}

    def start(self) -> "DnsServer":
        """Start on a free port (another, if that one was taken meanwhile); wait until it serves."""
        for _attempt in range(PORT_ATTEMPTS):
            self.port = free_port("udp", "tcp")
            if self._start_on(self.port):
                return self
        raise RuntimeError(f"dnsmasq could not bind a port; log:\n{self.log_text()}")

    def _start_on(self, port: int) -> bool:
        self.log = _Inbox()
        self.process = subprocess.Popen(self._command(port), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_log, args=(self.process,), daemon=True)
        self._reader.start()
        started = self.log.wait_for(lambda lines: any("started, version" in line for line in lines)
                                    or self.process.poll() is not None, START_TIMEOUT, "dnsmasq to start")
        if self.process.poll() is None and started:
            return True
        self._reader.join()
        if "Address already in use" in self.log_text():
            return False
        raise RuntimeError(f"dnsmasq exited with status {self.process.returncode}:\n{self.log_text()}")

    def _command(self, port: int) -> list[str]:
        return [
            DNSMASQ, "--keep-in-foreground", "--log-facility=-", "--log-queries",
            "--no-resolv", "--no-hosts", "--conf-file=/dev/null", f"--port={port}",
            "--listen-address=127.0.0.1", "--bind-interfaces",
            f"--pid-file={self.directory / 'dnsmasq.pid'}",
            # as root it would switch to nobody/dip; stay who we are
            f"--user={getpass.getuser()}", f"--group={grp.getgrgid(os.getgid()).gr_name}",
            f"--local-ttl={self.zone.ttl}",
            *(f"--local=/{domain}/" for domain in self.zone.local_domains()),
            *self.zone.options,
        ]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._reader is not None:
            self._reader.join()

    def queries(self) -> list[tuple[str, str]]:
        """(type, name) of every query received so far, oldest first, markers left out.

        Waits for a marker query of its own first: its log line comes after
        those of every query answered before, so none is missed.
        """
        marker = f"m{next(self._markers)}.{MARKER_DOMAIN}"
        dns.query.udp(dns.message.make_query(marker, "TXT"), "127.0.0.1", port=self.port, timeout=5)
        self.log.wait_for(lambda lines: any(f"query[TXT] {marker} " in line for line in lines),
                          START_TIMEOUT, f"dnsmasq to log {marker}")
        found = (QUERY_LOG.search(line) for line in list(self.log.items))
        return [(m.group(1), m.group(2)) for m in found if m and not m.group(2).endswith(MARKER_DOMAIN)]

    def log_text(self) -> str:
        return "\n".join(self.log.items)

    def _read_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        with open(self.directory / "dnsmasq.log", "ab") as copy:
            for raw in process.stderr:
                copy.write(raw)
                self.log.add(raw.decode(errors="replace").rstrip("\n"))
        with self.log.changed:   # wake a waiter: dnsmasq is gone
            self.log.changed.notify_all()


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[Callable[..., DnsServer]]:
    """Start dnsmasq with a DnsZone; every server started is stopped after the test."""
    servers: list[DnsServer] = []

    def start(zone: DnsZone) -> DnsServer:
        directory = tmp_path / f"dnsmasq-{len(servers)}"
        directory.mkdir()
        server = DnsServer(zone, directory)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """"IP:PORT" of a bound UDP socket that never answers: a nameserver that is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", free_port("udp")))
        yield "%s:%d" % sock.getsockname()
