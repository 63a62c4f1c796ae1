"""Shared by the registrar tests: the `make run` daemon on a test store, users, and a digest-speaking client."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import uuid
from pathlib import Path

from typing import Any

from oversipd.sip.syntax.message import Response, parse_message

from listen_helpers import free_port, listen_table
from sip_helpers import CLIENT_TIMEOUT, SipServer, StreamReader

REPO = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = (REPO / "server.py").read_text()   # the script `make run` runs, under test
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}
HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def registrar_daemon(oversipd_daemon, store: str, workers: int = 2, algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
                     registrar: dict[str, Any] | None = None, host: str = "127.0.0.1",
                     sip: dict[str, Any] | None = None, users: bool = True,
                     limits: dict[str, Any] | None = None) -> SipServer:
    """server.py with [registrar], [auth] and [proxy.proxy_to_users] on `store`; alice and bob are users."""
    port = free_port("tcp", "udp")   # checked on 127.0.0.1: free there, free on 127.0.0.2 and .3 too
    tables = {
        "listen.sip_udp": listen_table(f"udp://{host}:{port}"),
        "listen.sip_tcp": listen_table(f"tcp://{host}:{port}"),
        "sip": {"listen": ["sip_udp", "sip_tcp"], **(sip or {})},
        "registrar": {"store": store, "min_expires": 2, **(registrar or {})},
        "auth": {"store": store, "algorithms": list(algorithms), "nonce_lifetime": 300},
        "proxy.proxy_to_users": {"timer_C": 30},
        **({"limits": limits} if limits else {}),
    }
    daemon = oversipd_daemon(start=False, server_script=SERVER_SCRIPT, core={"workers": workers},
                             extra_tables=tables)
    server = SipServer(daemon, port, host)
    for name, password in PASSWORDS.items() if users else ():
        result = user_command(server.daemon, "add", name, password=password)
        assert result.returncode == 0, result.stderr
    server.daemon.start()
    return server


def user_command(daemon: Any, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """`oversipd user ARGS -c CONF`, the password on stdin."""
    return subprocess.run(daemon.command("user", *args, "-c", str(daemon.conf_path)), env=daemon.environment(),
                          input=None if password is None else password + "\n", capture_output=True, text=True,
                          timeout=30)


def challenges(response: Response, header: str = "WWW-Authenticate") -> list[dict[str, str]]:
    return [dict((key.lower(), value.strip('"')) for key, value in
                 re.findall(r'([A-Za-z-]+)=("[^"]*"|[^\s,]+)', text)) for text in response.headers(header)]


def authorization(method: str, uri: str, user: str, password: str, challenge: dict[str, str],
                  algorithm: str | None = None) -> str:
    """Digest credentials as a client computes them (RFC 7616, qop=auth)."""
    algorithm = algorithm or challenge["algorithm"]
    h = lambda text: HASHES[algorithm](text.encode()).hexdigest()   # noqa: E731
    ha1 = h(f"{user}:{challenge['realm']}:{password}")
    cnonce, nc = uuid.uuid4().hex[:16], "00000001"
    response = h(f"{ha1}:{challenge['nonce']}:{nc}:{cnonce}:auth:{h(f'{method}:{uri}')}")
    return (f'Digest username="{user}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", '
            f'uri="{uri}", response="{response}", algorithm={algorithm}, cnonce="{cnonce}", qop=auth, nc={nc}')


class SipPhone:
    """A registering client over UDP or TCP: builds REGISTERs, answers the digest challenge, reads responses."""

    def __init__(self, server: SipServer, user: str, transport: str = "udp", password: str | None = None,
                 domain: str | None = None) -> None:
        self.server, self.user, self.transport = server, user, transport
        self.domain = domain or server.host
        self.password = PASSWORDS.get(user, "x") if password is None else password
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.settimeout(CLIENT_TIMEOUT)
        self.sock.bind((server.host, 0))
        if transport == "tcp":
            self.sock.connect((server.host, server.port))
            self.reader = StreamReader(self.sock)
        self.port = self.sock.getsockname()[1]
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    @property
    def uri(self) -> str:
        return f"sip:{self.server.host}:{self.server.port}"

    def contact(self, suffix: str = "") -> str:
        return f"<sip:{self.user}@{self.server.host}:{self.port};transport={self.transport}>{suffix}"

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, (self.server.host, self.server.port))
        else:
            self.sock.sendall(data)

    def receive(self) -> Any:
        if self.transport == "udp":
            data, _ = self.sock.recvfrom(65535)
            return parse_message(data)
        return parse_message(self.reader.message())

    def send_request(self, method: str, ruri: str, *headers: str, cseq: int, to: str, branch: str | None = None,
                     call_id: str | None = None, from_tag: str = "caller") -> None:
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/{self.transport.upper()} {self.server.host}:{self.port};"
                 f"branch={branch or 'z9hG4bK' + uuid.uuid4().hex};rport",
                 f"From: <sip:{self.user}@{self.domain}>;tag={from_tag}", f"To: {to}",
                 f"Call-ID: {call_id or self.call_id}", f"CSeq: {cseq} {method}", "Max-Forwards: 70", *headers]
        self.send(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())

    def response(self, status: int | None = None) -> Response:
        """The next final response (or the next one of `status`), skipping the others."""
        while True:
            response = self.receive()
            if isinstance(response, Response) and (response.status == status if status else response.status >= 200):
                return response

    def register(self, *headers: str, authorization_header: str | None = None, cseq: int | None = None,
                 call_id: str | None = None) -> Response:
        """One REGISTER (no Contact header added: pass it), its final response."""
        self.cseq = cseq if cseq is not None else self.cseq + 1
        if authorization_header:
            headers = (*headers, f"Authorization: {authorization_header}")
        self.send_request("REGISTER", self.uri, *headers, cseq=self.cseq, to=f"<sip:{self.user}@{self.domain}>",
                          call_id=call_id, from_tag=uuid.uuid4().hex[:8])
        return self.response()

    def authenticated_register(self, *headers: str, algorithm: str | None = None, **options: Any) -> Response:
        """REGISTER, 401, REGISTER with credentials (the first challenge, or `algorithm`'s)."""
        challenged = self.register(*headers, **options)
        assert challenged.status == 401, challenged.to_bytes()
        offered = challenges(challenged)
        challenge = next(c for c in offered if algorithm is None or c["algorithm"] == algorithm)
        options.pop("cseq", None)
        return self.register(*headers, authorization_header=authorization(
            "REGISTER", self.uri, self.user, self.password, challenge), **options)

    def close(self) -> None:
        self.sock.close()


def bound_contacts(response: Response) -> dict[str, int]:
    """Contact URI -> expires of a REGISTER's 200."""
    found = {}
    for value in response.headers("Contact"):
        uri = value[value.index("<") + 1:value.index(">")]
        found[uri] = int(re.search(r";expires=(\d+)", value).group(1))
    return found


class Baresip:
    """A baresip softphone (Debian's, null audio) with one account on `server`; its output read line by line."""

    def __init__(self, directory: Path, user: str, server: SipServer, *commands: str) -> None:
        import queue
        import threading
        directory.mkdir()
        port = free_port("udp", "tcp")
        (directory / "config").write_text(
            f"sip_listen {server.host}:{port}\nmodule_path /usr/lib/baresip/modules\n"
            "module g711.so\nmodule aubridge.so\nmodule account.so\nmodule menu.so\n"
            f"audio_player aubridge,{user}\naudio_source aubridge,{user}\naudio_alert aubridge,{user}\n")
        (directory / "accounts").write_text(
            f"<sip:{user}@{server.host}:{server.port}>;auth_pass={PASSWORDS[user]};regint=600;answermode=auto\n")
        args = [arg for command in commands for arg in ("-e", command)]
        self.process = subprocess.Popen(["stdbuf", "-oL", "baresip", "-f", str(directory), *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        text=True, errors="replace")
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = CLIENT_TIMEOUT) -> str:
        """The first line of its output holding `text` (case-insensitive)."""
        import queue
        import time
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if text.lower() in line.lower():
                    return line
            try:
                self.seen.append(self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f"baresip never said {text!r}:\n{''.join(self.seen)}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
