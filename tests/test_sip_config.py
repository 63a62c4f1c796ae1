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
    ({"listen": ["local"]}, "sip.listen", "SIP runs on udp, tcp, tls, ws or wss"),
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


MYSELF_SCRIPT = """
from oversipd import SipEvents

@SipEvents.on_request
def on_request(request):
    request.reply(200 if request.destination_myself() else 404)
"""


def test_a_reload_applies_sip_keys_and_warns_about_listen(oversipd_daemon):
    from sip_helpers import UdpClient, request_bytes, sip_daemon

    server = sip_daemon(oversipd_daemon, script=MYSELF_SCRIPT)
    client = UdpClient(server)
    client.request("OPTIONS", user="alice")
    assert client.response().status == 200
    # A Request-URI naming sip.example.com is not us until local_domains says so.
    def ask_for_domain() -> int:
        data = request_bytes("OPTIONS", port=server.port, via_port=client.port)
        client.send(data.replace(f"sip:127.0.0.1:{server.port} SIP/2.0".encode(), b"sip:sip.example.com SIP/2.0", 1))
        return client.response().status
    statuses = [ask_for_domain()]
    server.daemon.extra_tables["sip"]["local_domains"] = ["sip.example.com"]
    server.daemon.write_conf()
    server.daemon.reload()
    statuses.append(ask_for_domain())
    assert statuses == [404, 200]
    server.daemon.extra_tables["sip"]["listen"] = ["sip_udp"]
    server.daemon.write_conf()
    server.daemon.reload()
    server.daemon.wait_log("[sip] listeners changed")
