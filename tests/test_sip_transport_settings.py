"""SIP.md §12: the [tls] and [websocket] tables; every mistake names the file and the key (exit status 2)."""

from __future__ import annotations

import pytest

from oversipd.errors import ConfigError, EXIT_USAGE
from oversipd.settings import load_settings
from oversipd.testing import toml_document

from listen_helpers import SERVING_SCRIPT
from secure_helpers import make_pki

LISTEN = {"listen.sip_udp": {"address": "udp://127.0.0.1:22991"},
          "listen.sip_wss": {"address": "wss://127.0.0.1:22992"},
          "listen.sip_ws": {"address": "ws://127.0.0.1:22993"}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings_of(tmp_path, tables):
    (tmp_path / "modules.d").mkdir(exist_ok=True)
    (tmp_path / "server.py").write_text("")
    path = tmp_path / "oversipd.conf"
    path.write_text(toml_document({**LISTEN, **tables}))
    return load_settings(path)


def error_of(tmp_path, tables) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        settings_of(tmp_path, tables)
    return caught.value


def test_the_defaults_of_sip_md_and_relative_paths(tmp_path, pki):
    (tmp_path / "tls").mkdir()
    for name in ("cert.pem", "key.pem"):
        (tmp_path / "tls" / name).write_bytes(open(getattr(pki, name.split(".")[0] + "_file"), "rb").read())
    sip = settings_of(tmp_path, {"sip": {"listen": ["sip_udp", "sip_wss"]},
                                 "tls": {"certificate": "tls/cert.pem", "private_key": "tls/key.pem"}}).sip
    assert sip.tls.certificate == str(tmp_path / "tls" / "cert.pem")
    assert (sip.tls.verify_client, sip.tls.verify_server, sip.tls.minimum_version, sip.tls.handshake_timeout) == \
        ("optional", True, "TLSv1.2", 4.0)
    assert (sip.websocket.max_message_size, sip.websocket.allowed_origins, sip.websocket.ping_interval,
            sip.websocket.pong_timeout) == (65535, (), 30.0, 10.0)


def test_ws_alone_needs_no_certificate(tmp_path):
    assert settings_of(tmp_path, {"sip": {"listen": ["sip_ws"]}}).sip.schemes == ("ws",)


@pytest.mark.parametrize("tables, key, words", [
    ({}, "tls", "a tls or wss listener needs"),
    ({"tls": {"certificate": "CERT"}}, "tls.private_key", "missing"),
    ({"tls": {"certificate": "nowhere.pem", "private_key": "KEY"}}, "tls.certificate", "nowhere.pem"),
    ({"tls": {"certificate": "KEY", "private_key": "KEY"}}, "tls.private_key", "do not load as a pair"),
    ({"tls": {"certificate": "CERT", "private_key": "KEY", "verify_client": "maybe"}}, "tls.verify_client",
     "expected one of"),
    ({"tls": {"certificate": "CERT", "private_key": "KEY", "minimum_version": "SSLv3"}}, "tls.minimum_version",
     "expected one of"),
    ({"tls": {"certificate": "CERT", "private_key": "KEY", "handshake_timeout": 0}}, "tls.handshake_timeout",
     "seconds > 0"),
    ({"tls": {"certificate": "CERT", "private_key": "KEY", "colour": 1}}, "tls.colour", "unknown key"),
    ({"tls": {"certificate": "CERT", "private_key": "KEY"}, "websocket": {"ping_interval": -1}},
     "websocket.ping_interval", "seconds > 0 (or 0)"),
    ({"tls": {"certificate": "CERT", "private_key": "KEY"}, "websocket": {"allowed_origins": "x"}},
     "websocket.allowed_origins", "expected a list"),
    ({"tls": {"certificate": "CERT", "private_key": "KEY"}, "websocket": {"max_message_size": 10}},
     "websocket.max_message_size", "expected an integer"),
])
def test_a_bad_tls_or_websocket_table_names_file_and_key(tmp_path, pki, tables, key, words):
    def files(value):
        return {"CERT": pki.cert_file, "KEY": pki.key_file}.get(value, value) if isinstance(value, str) else value
    tables = {name: {k: files(v) for k, v in table.items()} for name, table in tables.items()}
    error = error_of(tmp_path, {"sip": {"listen": ["sip_udp", "sip_wss"]}, **tables})
    assert error.key == key and words in error.problem, error


def test_oversipd_check_exits_2_on_a_key_that_does_not_load(oversipd_daemon, pki, tmp_path):
    key = tmp_path / "key.pem"
    key.write_bytes(b"")   # (unreadable would not be, for root)
    daemon = oversipd_daemon(start=False, server_script=SERVING_SCRIPT, extra_tables={
        **LISTEN, "sip": {"listen": ["sip_wss"]}, "tls": {"certificate": pki.cert_file, "private_key": str(key)}})
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    assert result.returncode == EXIT_USAGE
    assert "tls.private_key" in result.stderr and str(key) in result.stderr
