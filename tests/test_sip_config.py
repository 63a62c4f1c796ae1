"""SIP.md §8: the [sip] table; every mistake is exit status 2 naming the file and the key."""

from __future__ import annotations

import pytest

from oversipd.errors import EXIT_USAGE
from oversipd.sip.settings import SipSettings

from listen_helpers import SERVING_SCRIPT, listen_table

LISTEN = {"listen.sip_udp": listen_table("udp://127.0.0.1:22990"),
          "listen.sip_tcp": listen_table("tcp://127.0.0.1:22990"),
          "listen.local": listen_table("unix:///tmp/oversipd-sip-test.sock")}


def check(oversipd_daemon, sip):
    daemon = oversipd_daemon(start=False, server_script=SERVING_SCRIPT, extra_tables={**LISTEN, "sip": sip})
    return daemon.run_command("check", "-c", str(daemon.conf_path)), str(daemon.conf_path)


@pytest.mark.parametrize("sip, key, problem", [
    ({"listen": ["sip_udp"], "colour": "blue"}, "sip.colour", "unknown key"),
    ({"listen": ["nowhere"]}, "sip.listen", "'nowhere': no [listen.nowhere] section"),
    ({"listen": ["local"]}, "sip.listen", "SIP runs on udp or tcp"),
    ({"listen": []}, "sip.listen", "expected a non-empty list"),
    ({"listen": ["sip_udp", "sip_udp"]}, "sip.listen", "appears twice"),
    ({}, "sip.listen", "missing"),
    ({"listen": ["sip_udp"], "max_message_size": 10}, "sip.max_message_size", "expected an integer from 1024"),
    ({"listen": ["sip_udp"], "max_message_size": "big"}, "sip.max_message_size", "expected an integer"),
    ({"listen": ["sip_udp"], "tcp_idle_timeout": 0}, "sip.tcp_idle_timeout", "expected a number of seconds > 0"),
    ({"listen": ["sip_udp"], "advertised_host": "not a host!"}, "sip.advertised_host", "is not a host name"),
    ({"listen": ["sip_udp"], "local_domains": "example.com"}, "sip.local_domains", "expected a list"),
    ({"listen": ["sip_udp"], "local_domains": ["ok.example", "bad domain"]}, "sip.local_domains", "is not a host name"),
])
def test_a_bad_sip_table_exits_2_naming_file_and_key(oversipd_daemon, sip, key, problem):
    result, conf = check(oversipd_daemon, sip)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.startswith(f"oversipd: {conf}: {key}: ") and problem in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_good_sip_table(oversipd_daemon):
    result, _ = check(oversipd_daemon, {"listen": ["sip_udp", "sip_tcp"], "advertised_host": "SIP.Example.com",
                                        "local_domains": ["example.com", "[::1]"], "max_message_size": 4096,
                                        "tcp_idle_timeout": 10})
    assert result.returncode == 0, result.stderr


def test_defaults():
    assert SipSettings(listen=("a",)) == SipSettings(listen=("a",), advertised_host="", local_domains=(),
                                                     max_message_size=65535, tcp_idle_timeout=300.0)
