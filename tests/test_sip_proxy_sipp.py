"""SIP.md §10 with real peers: sipp as caller -> oversipd (2 workers, a proxying script) -> sipp as callee.

The scenarios (tests/sipp/proxy_*.xml) follow the Record-Route and
tolerate what two workers may do to one call over UDP (a late or missing
180, an ACK overtaken by the BYE).
"""

from __future__ import annotations

import collections
import socket
from pathlib import Path

import pytest

from dns_server import DnsZone
from sip_helpers import SIPP, Callee, run_sipp, sip_daemon, sipp_counts


pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is missing: `make test` installs sip-tester")

# OverSIP's checks, then every request goes out through [proxy.proxy_out];
# each callback records itself, so the test can count them.
ROUTING_SCRIPT = """
from oversipd import SipEvents
from oversipd.sip import Proxy
from oversipd.testing import record

@SipEvents.on_request
def on_request(request):
    if not request.check_max_forwards(70):
        return
    if request.in_dialog:
        request.loose_route()
    elif request.headers("route") and not request.loose_route():
        request.reply(403, "Pre-loaded Route Not Allowed")
        return
    proxy = Proxy("proxy_out")
    key = dict(call_id=request.call_id, method=request.sip_method)
    proxy.on_provisional_response(lambda r: record("provisional", status=r.status, **key))
    proxy.on_success_response(lambda r: record("success", status=r.status, **key))
    proxy.on_failure_response(lambda r: record("failure", status=r.status, **key))
    proxy.on_canceled(lambda cancel: record("canceled", **key))
    proxy.on_invite_timeout(lambda: record("invite_timeout", **key))
    proxy.on_error(lambda status, reason: record("error", status=status, **key))
    proxy.route(request)
"""

PROFILE = {"do_record_routing": True, "timer_B": 3, "timer_C": 4, "timer_F": 3,
           "use_naptr": False, "transport_preference": ["udp"]}
CALLS = 20


@pytest.fixture
def callees():
    started: list[Callee] = []

    def start(scenario: str, transport: str = "u1", calls: int = CALLS) -> Callee:
        callee = Callee(scenario, transport, calls)
        started.append(callee)
        return callee
    yield start
    for callee in started:
        callee.stop()


def proxy_server(oversipd_daemon, dns: dict | None = None, **profile):
    tables = {"proxy.proxy_out": {**PROFILE, **profile}}
    if dns is not None:
        tables["dns"] = dns
    return sip_daemon(oversipd_daemon, script=ROUTING_SCRIPT, workers=2, extra_tables=tables)


def call(server, callee_at: str, callee_transport: str, transport: str = "u1", calls: int = CALLS,
         rate: int = 10):
    return run_sipp(server, "proxy_call_uac.xml", "-key", "uas", callee_at, "-key", "uas_transport",
                    callee_transport, "-max_socket", "100", calls=calls, rate=rate, transport=transport)


def assert_callbacks_ran_once_each(daemon, calls: int) -> None:
    """One success callback per INVITE and per BYE: never twice, whatever was retransmitted."""
    events = daemon.wait_events("success", count=2 * calls)
    assert collections.Counter((e["call_id"], e["method"]) for e in events).most_common(1)[0][1] == 1
    assert {e["method"] for e in events} == {"INVITE", "BYE"}
    assert daemon.find("failure") == [] and daemon.find("error") == []


# The caller uses a socket per call (un, tn): over UDP its calls spread over
# both workers, while the callee's one socket sends all its responses to one.
@pytest.mark.parametrize("caller, callee", [("un", "u1"), ("tn", "t1"), ("un", "t1")],
                         ids=["udp", "tcp", "udp-in-tcp-out"])
def test_calls_go_through_and_in_dialog_requests_follow_the_record_route(oversipd_daemon, callees,
                                                                         caller, callee):
    server = proxy_server(oversipd_daemon)
    uas = callees("proxy_call_uas.xml", transport=callee)
    transport = "tcp" if callee == "t1" else "udp"
    result = call(server, f"127.0.0.1:{uas.port}", transport, transport=caller)
    assert sipp_counts(result) == (CALLS, 0), result.stdout[-3000:]
    status, output = uas.finish()
    assert status == 0, output[-3000:]
    assert_callbacks_ran_once_each(server.daemon, CALLS)
    if caller == "un":   # 20 source ports hash onto both slots (TCP: whichever worker accepts)
        assert {e["worker"] for e in server.daemon.find("success")} == {1, 2}


def test_a_cancelled_call_ends_487(oversipd_daemon, callees):
    server = proxy_server(oversipd_daemon)
    uas = callees("proxy_cancel_uas.xml", calls=5)
    result = run_sipp(server, "proxy_cancel_uac.xml", "-key", "uas", f"127.0.0.1:{uas.port}",
                      "-key", "uas_transport", "udp", calls=5, rate=5)
    assert sipp_counts(result) == (5, 0), result.stdout[-3000:]
    status, output = uas.finish()
    assert status == 0, output[-3000:]
    daemon = server.daemon
    assert len(daemon.wait_events("canceled", count=5)) == 5
    failures = daemon.wait_events("failure", count=5)
    assert [e["status"] for e in failures] == [487] * 5


def test_a_callee_that_never_answers_gets_408_upstream(oversipd_daemon):
    server = proxy_server(oversipd_daemon)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        result = run_sipp(server, "proxy_timeout_uac.xml", "-key", "uas",
                          f"127.0.0.1:{silent.getsockname()[1]}", "-key", "uas_transport", "udp",
                          calls=2, rate=2)
    assert sipp_counts(result) == (2, 0), result.stdout[-3000:]
    assert len(server.daemon.wait_events("invite_timeout", count=2)) == 2


def test_a_503_fails_over_to_the_next_dns_target(oversipd_daemon, callees, dns_server):
    busy = callees("proxy_503_uas.xml", calls=CALLS)
    good = callees("proxy_call_uas.xml", calls=CALLS)
    zone = DnsZone().srv("_sip._udp.pbx.test", "first.pbx.test", busy.port, priority=0) \
                    .srv("_sip._udp.pbx.test", "second.pbx.test", good.port, priority=10) \
                    .host("first.pbx.test", "127.0.0.1").host("second.pbx.test", "127.0.0.1")
    nameserver = dns_server(zone)
    server = proxy_server(oversipd_daemon, dns=nameserver.dns_table())
    result = call(server, "pbx.test", "udp")
    assert sipp_counts(result) == (CALLS, 0), result.stdout[-3000:]
    for callee in (busy, good):
        status, output = callee.finish()
        assert status == 0, output[-3000:]
    assert_callbacks_ran_once_each(server.daemon, CALLS)


def test_the_example_script_routes_calls_like_oversips_default_one(oversipd_daemon, callees):
    script = (Path(__file__).resolve().parent.parent / "examples" / "proxy_server.py").read_text()
    profile = {"do_record_routing": True, "use_dns": False}
    server = sip_daemon(oversipd_daemon, script=script, workers=2,
                        extra_tables={"proxy.proxy_out": profile, "proxy.proxy_in_dialog": profile})
    uas = callees("proxy_call_uas.xml", calls=10)
    result = call(server, f"127.0.0.1:{uas.port}", "udp", transport="un", calls=10)
    assert sipp_counts(result) == (10, 0), result.stdout[-3000:]
    status, output = uas.finish()
    assert status == 0, output[-3000:]
