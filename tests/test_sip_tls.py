"""SIP.md §12: SIP over TLS — certificates checked as configured, a bad handshake costs its connection only."""

from __future__ import annotations

import datetime
import socket
import ssl

import pytest
import trustme

from secure_helpers import make_pki, secure_daemon, stream_options, tls_connect
from sip_helpers import CLIENT_TIMEOUT

TRANSPORT_SCRIPT = """
from oversipd import SipEvents
from oversipd.testing import record

@SipEvents.on_client_tls_handshake
def on_tls(connection, certificates):
    record("tls", transport=connection.transport, certificates=len(certificates))
    connection.cvars["seen"] = "yes"

@SipEvents.on_request
def on_request(request):
    record("request", method=request.sip_method, transport=request.transport, secure=request.secure,
           websocket=request.websocket, cvar=(request.connection.cvars.get("seen")
                                               if request.connection is not None else None))
    request.reply(200)
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_options_over_tls_with_a_good_certificate(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, script=TRANSPORT_SCRIPT)
    with tls_connect(server, pki.client_context()) as sock:
        response = stream_options(sock, "TLS")
    assert response.status == 200
    tls_event = server.daemon.wait_events("tls")[0]
    assert (tls_event["transport"], tls_event["certificates"]) == ("tls", 0)
    request = server.daemon.wait_events("request")[0]
    assert (request["transport"], request["secure"], request["websocket"], request["cvar"]) == \
        ("tls", True, False, "yes")


def test_a_client_certificate_reaches_the_handshake_event(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, script=TRANSPORT_SCRIPT, tls={"verify_client": "required"})
    client_cert = pki.ca.issue_cert("alice@example.com")
    with tls_connect(server, pki.client_context(client_cert=client_cert)) as sock:
        assert stream_options(sock, "TLS").status == 200
    assert server.daemon.wait_events("tls")[0]["certificates"] == 1


def test_no_client_certificate_when_required_fails_that_handshake_only(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, script=TRANSPORT_SCRIPT, tls={"verify_client": "required"})
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
        with tls_connect(server, pki.client_context()) as sock:
            stream_options(sock, "TLS")   # TLS 1.3: the refusal shows at the first read
    with tls_connect(server, pki.client_context(client_cert=pki.ca.issue_cert("bob@example.com"))) as sock:
        assert stream_options(sock, "TLS").status == 200


def test_a_client_certificate_of_another_ca_fails_that_handshake(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, script=TRANSPORT_SCRIPT, tls={"verify_client": "optional"})
    stranger = trustme.CA().issue_cert("mallory@example.com")
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
        with tls_connect(server, pki.client_context(client_cert=stranger)) as sock:
            stream_options(sock, "TLS")
    with tls_connect(server, pki.client_context()) as sock:   # optional: none is fine
        assert stream_options(sock, "TLS").status == 200


@pytest.mark.parametrize("problem", ["wrong CA", "wrong host name", "expired"])
def test_a_client_refuses_a_bad_server_certificate(oversipd_daemon, pki, tmp_path, problem):
    """The client's check of what we present; the server goes on serving good clients."""
    if problem == "expired":
        pki = make_pki(tmp_path, not_after=datetime.datetime.now(datetime.timezone.utc) -
                       datetime.timedelta(days=1))
    server = secure_daemon(oversipd_daemon, pki)
    context = pki.client_context(ca=trustme.CA() if problem == "wrong CA" else None)
    hostname = "sip.example.org" if problem == "wrong host name" else "127.0.0.1"
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(server, context, server_hostname=hostname)
    if problem != "expired":
        with tls_connect(server, pki.client_context()) as sock:
            assert stream_options(sock, "TLS").status == 200


def test_garbage_and_a_silent_client_on_the_tls_port_cost_their_connection_only(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, tls={"handshake_timeout": 0.5})
    pid = server.daemon.worker_pids()[1]
    garbage = socket.create_connection(("127.0.0.1", server.port_of("tls")), timeout=CLIENT_TIMEOUT)
    garbage.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n" + bytes(range(256)) * 4)
    assert not _read_to_end(garbage).startswith(b"SIP/2.0")   # perhaps a TLS alert, then the end
    silent = socket.create_connection(("127.0.0.1", server.port_of("tls")), timeout=CLIENT_TIMEOUT)
    assert _read_to_end(silent) == b""             # closed at handshake_timeout, no byte sent
    with tls_connect(server, pki.client_context()) as sock:
        assert stream_options(sock, "TLS").status == 200
    assert server.daemon.worker_pids()[1] == pid
    garbage.close()
    silent.close()


def _read_to_end(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65535):
        received += chunk
    return received


def test_a_missing_certificate_is_a_configuration_error_naming_the_file(oversipd_daemon, pki, tmp_path):
    missing = tmp_path / "nowhere.pem"
    server = secure_daemon(oversipd_daemon, pki, tls={"certificate": str(missing)}, start=False)
    result = server.daemon.run_command("check", "-c", str(server.daemon.conf_path))
    assert result.returncode == 2
    assert "tls.certificate" in result.stderr and str(missing) in result.stderr


def test_a_reload_serves_a_renewed_certificate_to_new_connections(oversipd_daemon, pki, tmp_path):
    own = make_pki(tmp_path)   # its own files: the module's pki is shared
    server = secure_daemon(oversipd_daemon, own)
    with tls_connect(server, own.client_context()) as sock:
        assert stream_options(sock, "TLS").status == 200
    renewed = make_pki(tmp_path)   # another CA, written over the same files
    server.daemon.reload()
    with tls_connect(server, renewed.client_context()) as sock:
        assert stream_options(sock, "TLS").status == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(server, own.client_context())


RAISING_SCRIPT = """
from oversipd import SipEvents

@SipEvents.on_client_tls_handshake
def on_tls(connection, certificates):
    raise ValueError("refused by a script that raises")

@SipEvents.on_request
def on_request(request):
    request.reply(200)
"""


def test_a_handshake_event_that_raises_refuses_that_connection_only(oversipd_daemon, pki):
    server = secure_daemon(oversipd_daemon, pki, script=RAISING_SCRIPT)
    pid = server.daemon.worker_pids()[1]
    with tls_connect(server, pki.client_context()) as sock:
        with pytest.raises((EOFError, ConnectionError, ssl.SSLError)):
            stream_options(sock, "TLS")
    server.daemon.wait_log("refused by a script that raises")
    with socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT) as plain:
        assert stream_options(plain, "TCP").status == 200   # the worker serves on
    assert server.daemon.worker_pids()[1] == pid


def test_an_idle_tls_connection_costs_the_worker_tens_of_kilobytes_not_asyncios_256(oversipd_daemon, pki):
    """asyncio's TLS read buffer is 256 KiB per connection; ours is TLS_READ_BUFFER (bench-ws measured 285 KiB
    per idle WSS client before)."""
    import psutil
    server = secure_daemon(oversipd_daemon, pki, script=TRANSPORT_SCRIPT)
    [worker_pid] = server.daemon.worker_pids().values()
    worker = psutil.Process(worker_pid)
    with tls_connect(server, pki.client_context()) as first:
        assert stream_options(first, "TLS").status == 200   # the first connection's one-off costs
        before = worker.memory_info().rss
        held = []
        try:
            for _ in range(60):
                sock = tls_connect(server, pki.client_context())
                held.append(sock)
                assert stream_options(sock, "TLS").status == 200   # handshake done, buffers made
            per_connection = (worker.memory_info().rss - before) / len(held)
        finally:
            for sock in held:
                sock.close()
    assert per_connection < 128 * 1024, f"{per_connection / 1024:.0f} KiB per idle TLS connection"
