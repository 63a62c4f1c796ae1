"""SIP.md §12 in real browsers: two headless Chromium pages call each other on the /phone page.

`make run`'s server (server.py: registrar and digest authentication, here on
a test store) with a WSS listener and the status listener serving /phone
(modules.d/status.py, the page in phone/).  tests/js/two_browsers.js drives
Debian's Chromium with playwright-core: alice and bob open /phone, register
over WSS, alice calls bob, bob answers, both reach the confirmed state, RTP
flows both ways (WebRTC getStats), alice hangs up and both see the call end.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from js_helpers import JS_DIR, pki   # noqa: F401 (a fixture)
from listen_helpers import SERVING_SCRIPT, STATUS_SOURCE, free_port, http_get, listen_table
from registrar_helpers import PASSWORDS, REPO, SERVER_SCRIPT, user_command
from sip_helpers import SipServer

PHONE_DIR = REPO / "phone"
CHROMIUM = Path("/usr/bin/chromium")
CALL_TIMEOUT = 60   # seconds for the whole two-browser scenario (each step has 15)
# OVERSIPD_PHONE_SCREENSHOT=docs/phone-call.png remakes the screenshot of docs/tls-websocket.md.
SCREENSHOT = os.environ.get("OVERSIPD_PHONE_SCREENSHOT", "")


def phone_daemon(oversipd_daemon, pki, phone: Path = PHONE_DIR, start: bool = True) -> SipServer:
    """server.py over WSS only, with alice and bob as users and the status listener serving /phone."""
    wss_port, status_port = free_port("tcp"), free_port("tcp")
    while status_port == wss_port:   # free_port reserves nothing: the same one may come twice
        status_port = free_port("tcp")
    store = "sqlite:location.db"
    tables = {
        "listen.sip_wss": listen_table(f"wss://127.0.0.1:{wss_port}"),
        "listen.status": listen_table(f"tcp://127.0.0.1:{status_port}"),
        "sip": {"listen": ["sip_wss"]},
        "tls": {"certificate": pki.cert_file, "private_key": pki.key_file, "verify_client": "none"},
        "registrar": {"store": store},
        "auth": {"store": store, "algorithms": ["MD5"]},   # JsSIP knows MD5 only
        "proxy.proxy_to_users": {"timer_C": 30},
    }
    daemon = oversipd_daemon(start=False, server_script=SERVER_SCRIPT, modules={"status": STATUS_SOURCE},
                             settings={"status": {"phone": str(phone)}}, core={"workers": 2, "log_level": "info"},
                             extra_tables=tables)
    daemon.status_port = status_port
    server = SipServer(daemon, wss_port)
    if start:
        for name, password in PASSWORDS.items():
            result = user_command(daemon, "add", name, password=password)
            assert result.returncode == 0, result.stderr
        daemon.start()
    return server


def two_browsers(server: SipServer) -> list[str]:
    """Run tests/js/two_browsers.js against `server`; its output lines."""
    accounts = [f"{name}:{password}" for name, password in PASSWORDS.items()]   # alice calls bob
    command = ["node", str(JS_DIR / "two_browsers.js"), f"http://127.0.0.1:{server.daemon.status_port}/phone",
               f"wss://127.0.0.1:{server.port}", "127.0.0.1", *accounts]
    if SCREENSHOT:
        command.append(str(Path(SCREENSHOT).resolve()))
    result = subprocess.run(command, capture_output=True, text=True, timeout=CALL_TIMEOUT, cwd=JS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_two_chromium_pages_call_each_other_over_wss(oversipd_daemon, pki):
    assert (JS_DIR / "node_modules" / "playwright-core").is_dir(), "npm packages missing: `make test` runs npm ci"
    assert CHROMIUM.exists(), "Debian's chromium missing: `make test` installs it"
    server = phone_daemon(oversipd_daemon, pki)
    lines = two_browsers(server)
    steps = [line for line in lines if not line.startswith(("rtp ", "done "))]
    assert steps[:2] in (["registered alice", "registered bob"], ["registered bob", "registered alice"])
    assert steps[2] == "incoming call bob"
    assert sorted(steps[3:5]) == ["confirmed alice", "confirmed bob"]
    assert sorted(steps[5:]) == ["ended alice", "ended bob"]
    rtp = json.loads(lines[-1].removeprefix("done "))["rtp"]
    for name in PASSWORDS:
        assert rtp[name]["sent"] > 0 and rtp[name]["received"] > 0, rtp
    for method in ("REGISTER", "INVITE", "ACK", "BYE"):   # server.py logs each request it routes
        assert all(line.endswith("over wss") for line in server.daemon.wait_log(f"<server.py> [user] {method} sip:"))


# --- the page itself, on the status listener ---------------------------------------------------------

def status_daemon(oversipd_daemon, start: bool = True, **status: str):
    port = free_port("tcp")
    daemon = oversipd_daemon(start=start, modules={"status": STATUS_SOURCE}, server_script=SERVING_SCRIPT,
                             settings={"status": status},
                             extra_tables={"listen.status": listen_table(f"tcp://127.0.0.1:{port}")})
    daemon.status_port = port
    return daemon


def test_the_phone_page_and_its_scripts_are_served_from_the_phone_directory(oversipd_daemon):
    daemon = status_daemon(oversipd_daemon, phone=str(PHONE_DIR))
    daemon.wait_events("serving")
    status, headers, page = http_get(daemon.status_port, "/phone")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script src="/phone/jssip.js">' in page and b'<script src="/phone/phone.js">' in page
    for path, name in (("/phone/jssip.js", "build/jssip.js"), ("/phone/phone.js", "phone.js")):
        status, headers, script = http_get(daemon.status_port, path)
        assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
        assert script == (PHONE_DIR / name).read_bytes()
    assert http_get(daemon.status_port, "/phone", method="POST")[0] == 405
    assert http_get(daemon.status_port, "/phone/../phone.html")[0] == 404   # the three paths only
    assert http_get(daemon.status_port, "/phone/package.json")[0] == 404
    assert http_get(daemon.status_port, "/health")[0] == 200


def test_without_a_phone_directory_there_is_no_page(oversipd_daemon):
    daemon = status_daemon(oversipd_daemon)
    daemon.wait_events("serving")
    assert http_get(daemon.status_port, "/phone")[0] == 404
    assert http_get(daemon.status_port, "/phone/jssip.js")[0] == 404


def test_a_phone_directory_without_its_jssip_bundle_is_a_configuration_error(oversipd_daemon, tmp_path):
    unbuilt = tmp_path / "phone"
    unbuilt.mkdir()
    for name in ("phone.html", "phone.js"):
        (unbuilt / name).write_bytes((PHONE_DIR / name).read_bytes())
    daemon = status_daemon(oversipd_daemon, start=False, phone=str(unbuilt))
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        f"oversipd: {daemon.conf_path}: modules.status.phone: cannot read {unbuilt}/build/jssip.js (No such file or "
        "directory); `make run` makes the JsSIP bundle"], result.stderr
