"""The soak's store and its outages: the registrar's PostgreSQL, stopped and started at random.

The soak's daemon keeps its location store on a private PostgreSQL (the
one oversip-mod-postgresql's tests run, tests/test_mod_postgresql.py).  A
store outage stops the server for a while, sometimes kills a worker
meanwhile (its respawn must serve without the store), and requires: the
workers stay up, a REGISTER (which needs the store) gets 503 with
Retry-After within REFUSAL_TIMEOUT, an OPTIONS (which does not) gets
200, and once the server is back a REGISTER gets 200 within
RECOVERY_BOUND, with no restart of anything.
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from oversipd.sip.syntax.message import Response, parse_message

from sip_helpers import request_bytes
from test_mod_postgresql import PostgresServer

if TYPE_CHECKING:
    from .runner import Soak

REFUSAL_TIMEOUT = 8.0    # a REGISTER while the store is down: its 503 within this (a pool waits 2 s)
RECOVERY_BOUND = 10.0    # seconds from the server's start to the first REGISTER answered 200
RETRY_EVERY = 0.2        # between two REGISTERs while waiting for the recovery
DOWN_FOR = (0.2, 4.0)    # seconds the server stays down, chosen by the seed


class SoakStore:
    """A private PostgreSQL cluster in `base`, and the store URL of the registrar on it."""

    def __init__(self, base: Path) -> None:
        base.mkdir(mode=0o755)
        self.server = PostgresServer(base)
        self.server.initdb()
        self.server.start()
        self.recoveries: list[float] = []   # seconds from each start to the first REGISTER served
        self.refusals = 0                   # REGISTERs answered 503 while the server was down

    @property
    def url(self) -> str:
        info = self.server.conninfo()
        return f"postgresql://{info['user']}@/{info['dbname']}?host={info['host']}&port={info['port']}"

    def close(self) -> None:
        if self.server.is_running():
            self.server.stop()
        shutil.rmtree(self.server.base, ignore_errors=True)


def register(port: int, timeout: float) -> Response | None:
    """A REGISTER over UDP from a fresh port: the response, or None after `timeout` s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        sock.sendto(request_bytes("REGISTER", port=port, via_port=local, user="soak",
                                  extra=f"Contact: <sip:soak@127.0.0.1:{local}>\r\nExpires: 60"),
                    ("127.0.0.1", port))
        try:
            response = parse_message(sock.recv(65535))
        except TimeoutError:
            return None
    return response if isinstance(response, Response) else None


def store_outage(soak: "Soak") -> None:
    """The store stops (a worker killed meanwhile, now and then): 503 + Retry-After, then served again by itself."""
    from .faults import random_worker   # faults imports this module for its table
    store = soak.store
    if store is None:   # a soak without SIP load (make test's short run)
        return
    kill = soak.rng.random() < 0.5
    soak.injected("store outage" + (" with a worker SIGKILLed" if kill else ""))
    store.server.stop()
    try:
        if kill:
            _, pid = random_worker(soak)
            if soak.signal_worker(pid, signal.SIGKILL):
                soak.sip.worker_replaced(pid)
            soak.converge()
        refused = register(soak.sip.port, REFUSAL_TIMEOUT)
        if refused is None:
            raise soak.violation(f"a REGISTER got no answer in {REFUSAL_TIMEOUT:g} s while the store was down")
        if refused.status != 503 or not refused.header("Retry-After"):
            raise soak.violation(f"a REGISTER got {refused.status} (Retry-After {refused.header('Retry-After')}) "
                                 "while the store was down, not 503 with Retry-After")
        store.refusals += 1
        soak.checked("store down: a request that needs it gets 503 with Retry-After")
        soak.sip.check_udp(soak)
        soak.checked("store down: what needs no store is served")
        # Not a wait for something: the length of the outage is the fault.
        time.sleep(soak.rng.uniform(*DOWN_FOR))
    finally:
        if not store.server.is_running():
            store.server.start()
    soak.require_master()
    back = time.monotonic()
    while (response := register(soak.sip.port, REFUSAL_TIMEOUT)) is None or response.status != 200:
        if time.monotonic() - back > RECOVERY_BOUND:
            raise soak.violation(f"the store was back but a REGISTER still got "
                                 f"{response.status if response else 'no answer'} after {RECOVERY_BOUND:g} s")
        time.sleep(RETRY_EVERY)
    store.recoveries.append(time.monotonic() - back)
    soak.checked("store back: served again by itself within the bound")
