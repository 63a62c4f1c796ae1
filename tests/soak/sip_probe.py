"""The soak's SIP client: the workers answer SIP after every step, and a client's TCP connection outlives crashes.

After each step it sends an OPTIONS over UDP from a fresh port, and one
over a TCP connection it keeps open across steps, as a client behind NAT
keeps its flow (docs/sip.md, flows).  The connection may end when its
worker's slot goes away (TTOU, a daemon stop or a dead master): then it
is opened again and counted.  It must not end when its worker was
SIGKILLed or SIGTERMed alone and respawned in its slot: the master keeps
a duplicate and the new worker adopts it.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import TYPE_CHECKING

from oversipd.sip.syntax.message import Response, parse_message

from sip_helpers import StreamReader

if TYPE_CHECKING:
    from .runner import Soak

TIMEOUT = 10.0
# A worker behind the call stream for 50 ms sheds new requests with 503 +
# Retry-After (oversipd.sip.core.limits): the probe asks again, a 200 must follow.
SHED_RETRIES = 20
SHED_PAUSE = 0.25
WORKER_PID_HEADER = "X-Worker-Pid"

# Appended to the soak's server script: every OPTIONS gets 200 and says which
# worker answered; a REGISTER goes to the registrar (its store comes and
# goes: tests/soak/store.py); the rest is routed through [proxy.soak_out],
# record-routing, to the call stream's callee (tests/soak/calls.py).
SIP_HANDLER = f'''

from oversipd import SipEvents
from oversipd.sip import Proxy, registrar


@SipEvents.on_request
async def answer_options(request):
    if request.sip_method == "OPTIONS" and not request.in_dialog:
        request.reply(200, headers=[("{WORKER_PID_HEADER}", str(os.getpid()))])
        return
    if request.sip_method == "REGISTER":
        await registrar.save(request)
        return
    if request.in_dialog:
        request.loose_route()
    Proxy("soak_out").route(request)
'''

# The proxy's profile: every request follows the Record-Route, so the BYE of each call crosses oversipd.
PROXY_PROFILE = {"do_record_routing": True, "use_naptr": False, "transport_preference": ["udp"]}


def sip_tables(port: int, store: str | None) -> dict[str, dict[str, object]]:
    """The listeners and the proxy's profile; the registrar's table with a `store`."""
    tables: dict[str, dict[str, object]] = {
        "listen.sip_udp": {"address": f"udp://127.0.0.1:{port}"},
        "listen.sip_tcp": {"address": f"tcp://127.0.0.1:{port}"},
        "sip": {"listen": ["sip_udp", "sip_tcp"]},
        "proxy.soak_out": PROXY_PROFILE}
    if store is not None:
        tables["registrar"] = {"store": store, "min_expires": 2}
    return tables


class SipProbe:
    """OPTIONS after every step; one TCP connection kept across steps."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tcp: socket.socket | None = None
        self.reader: StreamReader | None = None
        self.master: int | None = None       # the master that accepted the connection
        self.holder: int | None = None       # the worker that answered on it last
        self.killed_holder = False           # killed since, its slot respawned: the connection must survive
        self.reopened = 0
        self.survived_kills = 0
        self.shed = 0                        # OPTIONS over UDP answered 503 + Retry-After, then asked again

    def worker_replaced(self, pid: int) -> None:
        """A fault SIGKILLed or SIGTERMed `pid` alone (its slot is respawned)."""
        if pid == self.holder:
            self.killed_holder = True

    def check(self, soak: "Soak") -> None:
        self.check_udp(soak)
        self.check_tcp(soak)

    def check_udp(self, soak: "Soak") -> None:
        """200 to an OPTIONS over UDP; a 503 with Retry-After (a worker behind the call stream sheds) is asked again."""
        for _ in range(SHED_RETRIES):
            response = self.options_over_udp(soak)
            if not (isinstance(response, Response) and response.status == 503 and response.header("Retry-After")):
                break
            self.shed += 1
            time.sleep(SHED_PAUSE)   # not a wait for an event: a client's pause before it asks again
        self.expect_200(soak, response, "UDP")
        soak.checked("the workers answer SIP over UDP")

    def options_over_udp(self, soak: "Soak") -> object:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.bind(("127.0.0.1", 0))
            sock.sendto(options(sock.getsockname()[1], "UDP"), ("127.0.0.1", self.port))
            try:
                return parse_message(sock.recv(65535))
            except TimeoutError:
                raise soak.violation(f"no answer to an OPTIONS over UDP in {TIMEOUT:g} s") from None

    def check_tcp(self, soak: "Soak") -> None:
        if self.master != soak.lifetime.master_pid:
            self.open(soak)   # a new master: the old connection went with the old daemon
        try:
            response = self.ask()
        except (EOFError, OSError) as error:
            if self.killed_holder:
                raise soak.violation(f"the TCP connection answered by worker pid {self.holder} ended ({error}) "
                                     "after that worker was killed and its slot respawned: it should have "
                                     "been adopted by the new worker") from None
            self.reopened += 1
            self.open(soak)
            response = self.ask()
        if self.killed_holder:
            self.survived_kills += 1
            soak.checked("a client's TCP connection outlives a SIGKILL or SIGTERM of its worker")
        self.expect_200(soak, response, "TCP")
        self.holder = int(response.header(WORKER_PID_HEADER) or 0)
        self.killed_holder = False
        soak.checked("the workers answer SIP over a kept TCP connection")

    def open(self, soak: "Soak") -> None:
        self.close()
        self.tcp = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.reader = StreamReader(self.tcp)
        self.master = soak.lifetime.master_pid
        self.holder = None
        self.killed_holder = False

    def ask(self) -> Response:
        assert self.tcp is not None and self.reader is not None
        self.tcp.sendall(options(self.tcp.getsockname()[1], "TCP"))
        response = parse_message(self.reader.message())
        assert isinstance(response, Response)
        return response

    @staticmethod
    def expect_200(soak: "Soak", response: object, transport: str) -> None:
        if not isinstance(response, Response) or response.status != 200:
            raise soak.violation(f"an OPTIONS over {transport} got {response!r}, not 200")

    def close(self) -> None:
        if self.tcp is not None:
            self.tcp.close()
        self.tcp = self.reader = None


def options(via_port: int, transport: str) -> bytes:
    call_id = uuid.uuid4().hex
    return (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:{via_port};branch=z9hG4bK{call_id}\r\n"
            "From: <sip:soak@127.0.0.1>;tag=soak\r\nTo: <sip:127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
