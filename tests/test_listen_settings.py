"""SPEC §3/§7: `[listen.NAME]` sections are parsed strictly; mistakes name the file and the key."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from oversipd.addresses import DEFAULT_BACKLOG
from oversipd.errors import ConfigError
from oversipd.settings import load_settings

from listen_helpers import REPO


def settings_from(tmp_path: Path, text: str):
    path = tmp_path / "oversipd.conf"
    path.write_text(text)
    return load_settings(path)


def config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, text)
    return caught.value


@pytest.mark.parametrize("address, scheme, family, kind, sockaddr", [
    ("tcp://127.0.0.1:22001", "tcp", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 22001)),
    ("udp://0.0.0.0:22002", "udp", socket.AF_INET, socket.SOCK_DGRAM, ("0.0.0.0", 22002)),
    ("tcp://[::1]:22003", "tcp", socket.AF_INET6, socket.SOCK_STREAM, ("::1", 22003)),
    ("udp://[::]:0", "udp", socket.AF_INET6, socket.SOCK_DGRAM, ("::", 0)),
    ("unix:///run/oversipd/status.sock", "unix", socket.AF_UNIX, socket.SOCK_STREAM,
     "/run/oversipd/status.sock"),
])
def test_addresses(tmp_path, address, scheme, family, kind, sockaddr):
    listen = settings_from(tmp_path, f'[listen.web]\naddress = "{address}"\n').listen["web"]
    assert (listen.name, listen.address, listen.scheme) == ("web", address, scheme)
    assert (listen.family, listen.type, listen.sockaddr) == (family, kind, sockaddr)
    assert listen.backlog == DEFAULT_BACKLOG


def test_backlog_and_several_sections(tmp_path):
    settings = settings_from(tmp_path, '[listen.a]\naddress = "tcp://127.0.0.1:1"\nbacklog = 16\n'
                                       '[listen.b-2]\naddress = "unix:///tmp/b.sock"\n')
    assert settings.listen["a"].backlog == 16
    assert sorted(settings.listen) == ["a", "b-2"]


def test_no_listen_section_is_fine(tmp_path):
    assert settings_from(tmp_path, "[core]\nworkers = 1\n").listen == {}


def test_the_repo_configuration_has_the_status_section():
    # Its wss listener's certificate is made by the Makefile, as `make run` does (git-ignored).
    subprocess.run(["make", "-s", "run-tls/cert.pem"], cwd=REPO, check=True, capture_output=True)
    listen = load_settings(REPO / "oversipd.conf").listen
    assert listen["status"].sockaddr == ("127.0.0.1", 8060)
    assert listen["sip_wss"].scheme == "wss"


@pytest.mark.parametrize("table, key, words", [
    ('address = "tcp://127.0.0.1:1"\nbakclog = 5', "listen.web.bakclog", "unknown key"),
    ('backlog = 5', "listen.web.address", "missing"),
    ('address = 8060', "listen.web.address", "expected a string"),
    ('address = "http://127.0.0.1:1"', "listen.web.address", "tcp://HOST:PORT"),
    ('address = "tcp://127.0.0.1"', "listen.web.address", "HOST:PORT"),
    ('address = "tcp://localhost:8060"', "listen.web.address", "not an IP address"),
    ('address = "tcp://::1:8060"', "listen.web.address", "brackets"),
    ('address = "tcp://[127.0.0.1]:8060"', "listen.web.address", "brackets"),
    ('address = "tcp://127.0.0.1:65536"', "listen.web.address", "from 0 to 65535"),
    ('address = "udp://127.0.0.1:-1"', "listen.web.address", "from 0 to 65535"),
    ('address = "unix://relative.sock"', "listen.web.address", "absolute path"),
    ('address = "unix:///' + "x" * 120 + '"', "listen.web.address", "longer than"),
    ('address = "tcp://127.0.0.1:1"\nbacklog = 0', "listen.web.backlog", "from 1 to"),
    ('address = "tcp://127.0.0.1:1"\nbacklog = true', "listen.web.backlog", "from 1 to"),
    ('address = "udp://127.0.0.1:1"\nbacklog = 5', "listen.web.backlog", "no backlog"),
])
def test_mistakes_name_the_file_and_the_key(tmp_path, table, key, words):
    error = config_error(tmp_path, f"[listen.web]\n{table}\n")
    assert error.source == str(tmp_path / "oversipd.conf")
    assert error.key == key
    assert words in error.problem
    assert key in error.one_line()


def test_a_bad_address_is_quoted_in_the_message(tmp_path):
    error = config_error(tmp_path, '[listen.web]\naddress = "tcp://127.0.0.1:99999"\n')
    assert "tcp://127.0.0.1:99999" in error.one_line()


def test_a_section_must_be_a_table(tmp_path):
    error = config_error(tmp_path, 'listen = { web = "tcp://127.0.0.1:1" }\n')
    assert error.key == "listen.web" and "table" in error.problem


def test_a_section_name_must_suit_socket_activation(tmp_path):
    error = config_error(tmp_path, '[listen."a:b"]\naddress = "tcp://127.0.0.1:1"\n')
    assert error.key == 'listen."a:b"'  # as TOML writes that key


def test_other_unknown_tables_are_still_refused(tmp_path):
    error = config_error(tmp_path, '[listens.web]\naddress = "tcp://127.0.0.1:1"\n')
    assert error.key == "listens"
