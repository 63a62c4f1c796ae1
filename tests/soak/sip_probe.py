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
import uuid
from typing import TYPE_CHECKING

from oversipd.sip.syntax.message import Response, parse_message

from sip_helpers import StreamReader

if TYPE_CHECKING:
    from .runner import Soak

TIMEOUT = 10.0
WORKER_PID_HEADER = "X-Worker-Pid"

# Appended to the soak's server script: every OPTIONS gets 200 and says which worker answered.
SIP_HANDLER = f'''

from oversipd import SipEvents


@SipEvents.on_request
def answer_options(request):
    if request.sip_method == "OPTIONS":
        request.reply(200, headers=[("{WORKER_PID_HEADER}", str(os.getpid()))])
    elif request.sip_method != "ACK":
        request.reply(501)
'''


def sip_tables(port: int) -> dict[str, dict[str, object]]:
    return {"listen.sip_udp": {"address": f"udp://127.0.0.1:{port}"},
            "listen.sip_tcp": {"address": f"tcp://127.0.0.1:{port}"},
            "sip": {"listen": ["sip_udp", "sip_tcp"]}}


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

    def worker_replaced(self, pid: int) -> None:
        """A fault SIGKILLed or SIGTERMed `pid` alone (its slot is respawned)."""
        if pid == self.holder:
            self.killed_holder = True

    def check(self, soak: "Soak") -> None:
        self.check_udp(soak)
        self.check_tcp(soak)

    def check_udp(self, soak: "Soak") -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.bind(("127.0.0.1", 0))
            sock.sendto(options(sock.getsockname()[1], "UDP"), ("127.0.0.1", self.port))
            try:
                response = parse_message(sock.recv(65535))
            except TimeoutError:
                raise soak.violation(f"no answer to an OPTIONS over UDP in {TIMEOUT:g} s") from None
        self.expect_200(soak, response, "UDP")
        soak.checked("the workers answer SIP over UDP")

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
