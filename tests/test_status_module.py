"""The example status module (modules.d/status.py) served by a real daemon on [listen.status]."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from oversipd.testing import Daemon

from listen_helpers import (CLIENT_TIMEOUT, SERVING_SCRIPT, STATUS_SOURCE, free_port, health,
                            http_get, http_request, listen_table, read_until_closed)

TIMEOUT = 0.5          # [modules.status] timeout for this daemon: slow clients are cut quickly
MAX_REQUEST = 1024


@pytest.fixture(scope="module")
def status_daemon(tmp_path_factory):
    directory = tmp_path_factory.mktemp("status")
    directory.chmod(0o755)
    port = free_port("tcp")
    daemon = Daemon(directory, modules={"status": STATUS_SOURCE}, server_script=SERVING_SCRIPT,
                    core={"workers": 2, "log_level": "info"},
                    settings={"status": {"timeout": TIMEOUT, "max_request_bytes": MAX_REQUEST}},
                    extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{port}")})
    daemon.port = port
    try:
        daemon.start()
        daemon.wait_events("serving", count=2)
        yield daemon
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)


def test_health_reports_the_worker(status_daemon):
    answer = health(status_daemon.port)
    pids = status_daemon.worker_pids()
    assert set(answer) == {"worker", "pid", "uptime_s", "reloads"}
    assert pids[answer["worker"]] == answer["pid"]
    assert answer["uptime_s"] >= 0 and answer["reloads"] == 0


def test_headers_of_a_health_answer(status_daemon):
    status, headers, body = http_get(status_daemon.port)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert "date" in headers


def test_head_has_no_body(status_daemon):
    with connect(status_daemon.port) as sock:
        sock.sendall(b"HEAD /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and rest == b""


def test_a_query_string_is_ignored(status_daemon):
    assert http_get(status_daemon.port, "/health?verbose=1")[0] == 200


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/", 404), ("GET", "/healthz", 404), ("POST", "/other", 404),
    ("POST", "/health", 405), ("DELETE", "/health", 405), ("PUT", "/health", 405),
])
def test_other_requests(status_daemon, method, path, status):
    got, headers, body = http_get(status_daemon.port, path, method=method)
    assert got == status
    assert "error" in json.loads(body)
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


def test_keep_alive_serves_several_requests_on_one_connection(status_daemon):
    with connect(status_daemon.port) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
        sock.sendall(request * 3 + b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock)
    answers = data.split(b"HTTP/1.1 200 OK")[1:]
    assert len(answers) == 4
    assert len({json.loads(a.split(b"\r\n\r\n")[1])["pid"] for a in answers}) == 1


def test_http_1_0_closes_after_the_answer(status_daemon):
    status, headers, _ = http_request(status_daemon.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert status == 200 and headers["connection"] == "close"


@pytest.mark.parametrize("raw, status", [
    (b"hello\r\n\r\n", 400),
    (b"GET /health\r\n\r\n", 400),
    (b"GET health HTTP/1.1\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /health HTTP/2.0\r\n\r\n", 505),
])
def test_malformed_requests_get_an_error_and_the_connection_closed(status_daemon, raw, status):
    got, headers, _ = http_request(status_daemon.port, raw)
    assert got == status and headers["connection"] == "close"


def test_a_request_larger_than_the_limit_gets_431(status_daemon):
    raw = b"GET /health HTTP/1.1\r\nX-Padding: " + b"x" * MAX_REQUEST + b"\r\n\r\n"
    got, headers, _ = http_request(status_daemon.port, raw)
    assert got == 431 and headers["connection"] == "close"


def test_a_request_with_a_body_is_answered_then_closed(status_daemon):
    raw = b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    got, headers, _ = http_request(status_daemon.port, raw)
    assert got == 405 and headers["connection"] == "close"


@pytest.mark.parametrize("sent", [b"", b"GET /health HTTP/1.1\r\nHost: t\r\n"])
def test_a_slow_client_is_disconnected_after_the_timeout(status_daemon, sent):
    with connect(status_daemon.port) as sock:
        sock.sendall(sent)
        # The server closes the connection once its TIMEOUT passes; the
        # client's own, longer timeout only keeps a broken test from hanging.
        assert read_until_closed(sock) == b""


def test_reloads_are_counted(status_daemon):
    status_daemon.signal(signal.SIGHUP)
    status_daemon.wait_notification("READY=1", count=2)  # every worker ran on_reload
    assert health(status_daemon.port)["reloads"] == 1
