"""SIP.md §10: `[proxy.NAME]` and `[dns]` — the defaults, and every mistake exits 2 naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from oversipd.settings import load_settings
from oversipd.sip.proxy_settings import DnsSettings, ProxySettings

from conftest import PROBE, check_fails_cleanly
from dns_server import DnsZone


def settings_from(tmp_path: Path, text: str):
    path = tmp_path / "oversipd.conf"
    path.write_text(text)
    return load_settings(path)


def test_the_defaults_are_those_of_sip_md(tmp_path):
    settings = settings_from(tmp_path, "[proxy.proxy_out]\n")
    assert settings.dns == DnsSettings(nameservers=(), timeout=2.0)
    profile = settings.proxies["proxy_out"]
    assert profile == ProxySettings(
        name="proxy_out", do_record_routing=True, use_dns=True, use_naptr=True, use_srv=True,
        transport_preference=("tcp", "udp"), dns_cache_time=300, dns_failover_on_503=True,
        timer_B=32, timer_C=120, timer_F=32)


def test_without_tables_there_are_no_profiles_and_no_dns_table(tmp_path):
    settings = settings_from(tmp_path, "[core]\nworkers = 1\n")
    assert settings.proxies == {} and settings.dns is None  # no [dns] table: the proxy takes DnsSettings()


def test_every_key_is_read(tmp_path):
    settings = settings_from(tmp_path, """
        [proxy.out]
        do_record_routing = false
        use_dns = false
        use_naptr = false
        use_srv = false
        transport_preference = ["UDP"]
        dns_cache_time = 0
        dns_failover_on_503 = false
        timer_B = 4
        timer_C = 180.5
        timer_F = 0.5
        [proxy.in]
        [dns]
        nameservers = ["127.0.0.1", "127.0.0.2:5353", "::1", "[fd00::1]:5353", "fd00::2"]
        timeout = 0.25
    """.replace("\n        ", "\n"))
    assert settings.proxies["out"] == ProxySettings(
        name="out", do_record_routing=False, use_dns=False, use_naptr=False, use_srv=False,
        transport_preference=("udp",), dns_cache_time=0, dns_failover_on_503=False,
        timer_B=4, timer_C=180.5, timer_F=0.5)
    assert settings.proxies["in"] == ProxySettings(name="in")
    assert settings.dns.nameservers == (("127.0.0.1", 53), ("127.0.0.2", 5353), ("::1", 53),
                                        ("fd00::1", 5353), ("fd00::2", 53))
    assert settings.dns.timeout == 0.25


BAD_PROXY_VALUES = [
    ("do_record_routing", "yes"), ("use_dns", 1), ("use_naptr", "true"), ("use_srv", []),
    ("transport_preference", []), ("transport_preference", "tcp"), ("transport_preference", ["ws"]),
    ("transport_preference", ["tcp", "TCP"]), ("transport_preference", [5060]),
    ("dns_cache_time", -1), ("dns_cache_time", "300"), ("dns_cache_time", True), ("dns_cache_time", "inf"),
    ("dns_failover_on_503", 0), ("timer_B", 0), ("timer_C", -5), ("timer_F", "32"),
    ("use_dnz", True),
]
BAD_DNS_VALUES = [
    ("nameservers", "127.0.0.1"), ("nameservers", ["dns.example.com"]), ("nameservers", ["127.0.0.1:0"]),
    ("nameservers", ["127.0.0.1:99999"]), ("nameservers", ["[::1]5353"]), ("nameservers", [53]),
    ("nameservers", ["127.0.0.1:x"]), ("timeout", 0), ("timeout", -1), ("timeout", "2"),
    ("retries", 3),
]


@pytest.mark.parametrize("key,value", BAD_PROXY_VALUES)
def test_a_bad_proxy_key_names_the_file_and_key(oversipd_daemon, key, value):
    if value == "inf":
        value = float("inf")
    daemon = oversipd_daemon(modules={"probe": PROBE}, extra_tables={"proxy.proxy_out": {key: value}},
                             start=False)
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    check_fails_cleanly(daemon, result, str(daemon.conf_path), f"proxy.proxy_out.{key}")


@pytest.mark.parametrize("key,value", BAD_DNS_VALUES)
def test_a_bad_dns_key_names_the_file_and_key(oversipd_daemon, key, value):
    daemon = oversipd_daemon(modules={"probe": PROBE}, extra_tables={"dns": {key: value}}, start=False)
    result = daemon.run_command("run", "-c", str(daemon.conf_path))
    check_fails_cleanly(daemon, result, str(daemon.conf_path), f"dns.{key}")


@pytest.mark.parametrize("text, fragment", [
    ("proxy = 3\n", "proxy: expected a table"),
    ("dns = 3\n", "dns: expected a table"),
    ("[proxy]\nout = 3\n", "proxy.out: expected a table"),
    ('[proxy."a b"]\n', 'proxy."a b": a profile name may use'),
])
def test_a_malformed_table_is_refused(oversipd_daemon, text, fragment):
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False)
    daemon.conf_path.write_text(text)
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    check_fails_cleanly(daemon, result, str(daemon.conf_path), fragment)


def test_a_valid_configuration_passes_check(oversipd_daemon):
    daemon = oversipd_daemon(modules={"probe": PROBE}, start=False, extra_tables={
        "proxy.proxy_out": {"transport_preference": ["udp", "tcp"], "dns_cache_time": 60},
        "dns": {"nameservers": ["127.0.0.1:5353"], "timeout": 1.5}})
    result = daemon.run_command("check", "-c", str(daemon.conf_path))
    assert result.returncode == 0, result.stderr


def test_the_dns_table_of_a_test_server_is_valid(oversipd_daemon, dns_server):
    server = dns_server(DnsZone().host("pbx.example.test", "127.0.0.1"))
    daemon = oversipd_daemon(start=False, extra_tables={"dns": server.dns_table()})
    assert daemon.run_command("check", "-c", str(daemon.conf_path)).returncode == 0
    assert load_settings(daemon.conf_path).dns.nameservers == (("127.0.0.1", server.port),)
