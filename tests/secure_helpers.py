"""Shared by the TLS and WebSocket tests (SIP.md §12): certificates from trustme, clients, a daemon with every transport."""

from __future__ import annotations

import datetime
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from websockets.sync.client import connect as ws_connect

from oversipd.sip.syntax.message import parse_message

from listen_helpers import free_port, listen_table
from sip_helpers import CLIENT_TIMEOUT, RECORDING_SCRIPT, SipServer, StreamReader, request_bytes

SCHEMES = ("udp", "tcp", "tls", "ws", "wss")


@dataclass
class Pki:
    """A CA, our server's chain and key as files, and clients' certificates."""

    ca: trustme.CA
    directory: Path
    cert_file: str
    key_file: str
    ca_file: str

    def client_context(self, ca: trustme.CA | None = None, client_cert: trustme.LeafCert | None = None,
                       check_hostname: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context()
        context.check_hostname = check_hostname
        (ca or self.ca).configure_trust(context)
        if client_cert is not None:
            client_cert.configure_cert(context)
        return context


def make_pki(directory: Path, not_after: datetime.datetime | None = None) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", not_after=not_after)
    cert_file, key_file, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert_file))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(cert_file), append=True)
    server.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca, directory, str(cert_file), str(key_file), str(ca_file))


@dataclass
class SecureServer(SipServer):
    ports: dict[str, int] | None = None

    def port_of(self, scheme: str) -> int:
        assert self.ports is not None
        return self.ports[scheme]


def secure_daemon(oversipd_daemon, pki: Pki, script: str = RECORDING_SCRIPT, workers: int = 1,
                  tls: dict[str, Any] | None = None, websocket: dict[str, Any] | None = None,
                  extra_tables: dict[str, Any] | None = None, start: bool = True, **options: Any) -> SecureServer:
    """A daemon with a listener of every transport (udp and tcp share a port)."""
    port = free_port("tcp", "udp")
    ports = {"udp": port, "tcp": port}
    for scheme in ("tls", "ws", "wss"):
        while (candidate := free_port("tcp")) in ports.values():
            pass   # free_port reserves nothing: the same one may come twice
        ports[scheme] = candidate
    tables: dict[str, Any] = {f"listen.sip_{scheme}": listen_table(f"{scheme}://127.0.0.1:{ports[scheme]}")
                              for scheme in SCHEMES}
    tables["sip"] = {"listen": [f"sip_{scheme}" for scheme in SCHEMES]}
    tables["tls"] = {"certificate": pki.cert_file, "private_key": pki.key_file, "ca_file": pki.ca_file,
                     **(tls or {})}
    if websocket:
        tables["websocket"] = websocket
    core = {"workers": workers, **options.pop("core", {})}
    daemon = oversipd_daemon(start=start, server_script=script, core=core,
                             extra_tables={**tables, **(extra_tables or {})}, **options)
    return SecureServer(daemon, port, "127.0.0.1", ports)


def tls_connect(server: SecureServer, context: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port_of("tls")), timeout=CLIENT_TIMEOUT)
    return context.wrap_socket(raw, server_hostname=server_hostname)


def stream_options(sock: socket.socket, transport: str, **fields: Any) -> Any:
    """An OPTIONS to us over a stream; its response, parsed."""
    local_port = sock.getsockname()[1]
    sock.sendall(request_bytes("OPTIONS", port=sock.getpeername()[1], via_port=local_port,
                               transport=transport, **fields))
    return parse_message(StreamReader(sock).message())


def ws_url(server: SecureServer, scheme: str, path: str = "/") -> str:
    return f"{scheme}://127.0.0.1:{server.port_of(scheme)}{path}"


def ws_client(server: SecureServer, scheme: str = "ws", pki: Pki | None = None, subprotocols=("sip",),
              **options: Any):
    """A websockets client (a real peer) over ws or wss."""
    if scheme == "wss":
        assert pki is not None
        options["ssl"] = pki.client_context()
    return ws_connect(ws_url(server, scheme), subprotocols=list(subprotocols) if subprotocols else None,
                      open_timeout=CLIENT_TIMEOUT, **options)


def ws_request(client: Any, server: SecureServer, method: str = "OPTIONS", transport: str = "WS",
               **fields: Any) -> Any:
    """A request over a WebSocket client; the next message it gets back, parsed."""
    client.send(request_bytes(method, port=server.port_of(transport.lower()), via_port=9,
                              transport=transport, **fields).decode())
    return parse_message(_as_bytes(client.recv(timeout=CLIENT_TIMEOUT)))


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data
