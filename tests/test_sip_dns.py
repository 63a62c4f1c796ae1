"""SIP.md §10 / RFC 3263: where the proxy sends a request, resolved against a real DNS server (dnsmasq)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, strategies as st

from oversipd.sip.proxy.dns import DnsError, Rfc3263Resolver, SipDestination, Target, order_srv_records
from oversipd.sip.proxy_settings import DnsSettings, ProxySettings, parse_nameserver

from dns_server import DnsZone

DOMAIN = "example.test"
PROFILE = ProxySettings(name="proxy_out")


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(*nameservers: str, timeout: float = 5.0, **options) -> Rfc3263Resolver:
    settings = DnsSettings(nameservers=tuple(parse_nameserver(ns) for ns in nameservers), timeout=timeout)
    return Rfc3263Resolver(settings, **options)


def resolve(resolver: Rfc3263Resolver, uri_host: str, *, scheme: str = "sip", port: int | None = None,
            transport: str | None = None, policy: ProxySettings = PROFILE) -> list[Target]:
    destination = SipDestination(scheme, uri_host, port, transport)
    return asyncio.run(resolver.resolve(destination, policy))


def resolve_error(resolver: Rfc3263Resolver, uri_host: str, **options) -> DnsError:
    with pytest.raises(DnsError) as caught:
        resolve(resolver, uri_host, **options)
    return caught.value


def full_zone() -> DnsZone:
    """NAPTR -> SRV -> A for DOMAIN: TCP preferred by the domain, UDP next."""
    return (DnsZone()
            .naptr(DOMAIN, 10, 50, "SIP+D2T", f"_sip._tcp.{DOMAIN}")
            .naptr(DOMAIN, 20, 50, "SIP+D2U", f"_sip._udp.{DOMAIN}")
            .naptr(DOMAIN, 5, 10, "SIPS+D2T", f"_sips._tcp.{DOMAIN}")        # TLS: for sips only here
            .naptr(DOMAIN, 5, 20, "E2U+sip", f"_sip._udp.{DOMAIN}", flags="U")  # not a SIP service
            .srv(f"_sip._tcp.{DOMAIN}", f"tcp1.{DOMAIN}", 5070, priority=10)
            .srv(f"_sip._udp.{DOMAIN}", f"udp1.{DOMAIN}", 5071, priority=10)
            .srv(f"_sips._tcp.{DOMAIN}", f"tcp1.{DOMAIN}", 5072, priority=10)
            .host(f"tcp1.{DOMAIN}", "127.0.0.11")
            .host(f"udp1.{DOMAIN}", "127.0.0.12"))


# --- NAPTR -> SRV -> A ------------------------------------------------------------

def test_naptr_leads_to_srv_and_addresses_in_naptr_order(dns_server):
    server = dns_server(full_zone())
    targets = resolve(resolver_for(server.nameserver), DOMAIN)
    assert targets == [Target("tcp", "127.0.0.11", 5070), Target("udp", "127.0.0.12", 5071)]


def test_naptr_preference_orders_records_of_the_same_order(dns_server):
    zone = (DnsZone()
            .naptr(DOMAIN, 10, 90, "SIP+D2T", f"_sip._tcp.{DOMAIN}")
            .naptr(DOMAIN, 10, 10, "SIP+D2U", f"_sip._udp.{DOMAIN}")
            .srv(f"_sip._tcp.{DOMAIN}", f"tcp1.{DOMAIN}", 5070)
            .srv(f"_sip._udp.{DOMAIN}", f"udp1.{DOMAIN}", 5071)
            .host(f"tcp1.{DOMAIN}", "127.0.0.11").host(f"udp1.{DOMAIN}", "127.0.0.12"))
    server = dns_server(zone)
    assert [t.transport for t in resolve(resolver_for(server.nameserver), DOMAIN)] == ["udp", "tcp"]


def test_transport_preference_filters_naptr_services(dns_server):
    server = dns_server(full_zone())
    udp_only = replace(PROFILE, transport_preference=("udp",))
    assert resolve(resolver_for(server.nameserver), DOMAIN, policy=udp_only) == \
        [Target("udp", "127.0.0.12", 5071)]


def test_without_naptr_srv_is_asked_per_transport_in_preference_order(dns_server):
    zone = (DnsZone()
            .srv(f"_sip._udp.{DOMAIN}", f"udp1.{DOMAIN}", 5071)
            .srv(f"_sip._tcp.{DOMAIN}", f"tcp1.{DOMAIN}", 5070)
            .host(f"tcp1.{DOMAIN}", "127.0.0.11").host(f"udp1.{DOMAIN}", "127.0.0.12"))
    server = dns_server(zone)
    resolver = resolver_for(server.nameserver)
    assert resolve(resolver, DOMAIN) == [Target("tcp", "127.0.0.11", 5070), Target("udp", "127.0.0.12", 5071)]
    udp_first = replace(PROFILE, transport_preference=("udp", "tcp"))
    assert resolve(resolver, DOMAIN, policy=udp_first) == \
        [Target("udp", "127.0.0.12", 5071), Target("tcp", "127.0.0.11", 5070)]


def test_use_naptr_false_goes_straight_to_srv(dns_server):
    server = dns_server(full_zone())
    no_naptr = replace(PROFILE, use_naptr=False, transport_preference=("udp", "tcp"))
    assert resolve(resolver_for(server.nameserver), DOMAIN, policy=no_naptr) == \
        [Target("udp", "127.0.0.12", 5071), Target("tcp", "127.0.0.11", 5070)]
    assert "NAPTR" not in {kind for kind, _name in server.queries()}


def test_without_srv_the_host_addresses_get_the_default_port_and_udp(dns_server):
    server = dns_server(DnsZone().host(DOMAIN, "127.0.0.21", "127.0.0.22"))
    assert resolve(resolver_for(server.nameserver), DOMAIN) == \
        [Target("udp", "127.0.0.21", 5060), Target("udp", "127.0.0.22", 5060)]


def test_use_srv_false_skips_srv(dns_server):
    server = dns_server(DnsZone().srv(f"_sip._udp.{DOMAIN}", f"udp1.{DOMAIN}", 5071)
                        .host(f"udp1.{DOMAIN}", "127.0.0.12").host(DOMAIN, "127.0.0.21"))
    plain = replace(PROFILE, use_naptr=False, use_srv=False)
    assert resolve(resolver_for(server.nameserver), DOMAIN, policy=plain) == [Target("udp", "127.0.0.21", 5060)]
    assert {kind for kind, _name in server.queries()} == {"A", "AAAA"}


# --- SRV priorities and weights (RFC 2782) ------------------------------------------

def test_srv_priorities_come_in_order_and_weights_share_the_first_place(dns_server):
    weights = {"w10": 10, "w30": 30, "w60": 60}
    zone = DnsZone().srv(f"_sip._udp.{DOMAIN}", f"backup.{DOMAIN}", 5099, priority=20, weight=100)
    zone.host(f"backup.{DOMAIN}", "127.0.0.99")
    for index, (label, weight) in enumerate(weights.items(), start=1):
        zone.srv(f"_sip._udp.{DOMAIN}", f"{label}.{DOMAIN}", 5070 + index, priority=10, weight=weight)
        zone.host(f"{label}.{DOMAIN}", f"127.0.0.{index}")
    server = dns_server(zone)
    # The record sets are cached; the weighted order is drawn anew on every resolution.
    resolver = resolver_for(server.nameserver, rng=random.Random(20260101), clock=FakeClock())
    udp = replace(PROFILE, use_naptr=False, transport_preference=("udp",))
    rounds = 4000
    first = Counter()
    for _ in range(rounds):
        targets = resolve(resolver, DOMAIN, policy=udp)
        assert len(targets) == 4 and targets[-1] == Target("udp", "127.0.0.99", 5099)
        first[targets[0].port] += 1
    for index, weight in enumerate(weights.values(), start=1):
        share = first[5070 + index] / rounds
        # Expected weight/100; the seed is fixed, so the bound is checked once, not gambled.
        assert abs(share - weight / 100) < 0.03, (weight, share)


@dataclass
class Srv:
    priority: int
    weight: int
    port: int


def test_zero_weight_records_keep_a_small_chance_and_all_records_stay_listed():
    records = [Srv(10, 0, 1), Srv(10, 9, 2), Srv(5, 0, 3)]
    rng = random.Random(7)
    orders = [[r.port for r in order_srv_records(records, rng)] for _ in range(2000)]
    assert all(order[0] == 3 and sorted(order) == [1, 2, 3] for order in orders)
    zero_first = sum(order[1] == 1 for order in orders) / len(orders)
    assert 0.05 < zero_first < 0.15   # 1 chance in 10 (randint(0, 9) == 0)


@given(st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), max_size=12), st.integers())
def test_srv_order_is_a_permutation_by_ascending_priority(priorities_weights, seed):
    records = [Srv(priority, weight, port) for port, (priority, weight) in enumerate(priorities_weights)]
    ordered = order_srv_records(records, random.Random(seed))
    assert sorted(r.port for r in ordered) == list(range(len(records)))
    assert [r.priority for r in ordered] == sorted(r.priority for r in records)


# --- A / AAAA, explicit ports, IP literals --------------------------------------------

def test_aaaa_records_follow_a_records(dns_server):
    zone = (DnsZone().srv(f"_sip._tcp.{DOMAIN}", f"dual.{DOMAIN}", 5070)
            .srv(f"_sip._tcp.{DOMAIN}", f"six.{DOMAIN}", 5071, priority=1)
            .host(f"dual.{DOMAIN}", "127.0.0.31", "fd00::31").host(f"six.{DOMAIN}", "fd00::32"))
    server = dns_server(zone)
    assert resolve(resolver_for(server.nameserver), DOMAIN) == [
        Target("tcp", "127.0.0.31", 5070), Target("tcp", "fd00::31", 5070), Target("tcp", "fd00::32", 5071)]
    ipv4_only = resolver_for(server.nameserver, ip_versions=(4,))
    assert resolve(ipv4_only, DOMAIN) == [Target("tcp", "127.0.0.31", 5070)]


def test_an_explicit_port_asks_only_for_addresses(dns_server):
    server = dns_server(full_zone().host(DOMAIN, "127.0.0.21"))
    resolver = resolver_for(server.nameserver)
    assert resolve(resolver, DOMAIN, port=5080) == [Target("udp", "127.0.0.21", 5080)]
    assert resolve(resolver, DOMAIN, port=5080, transport="TCP") == [Target("tcp", "127.0.0.21", 5080)]
    assert {kind for kind, _name in server.queries()} == {"A", "AAAA"}


def test_a_transport_parameter_asks_srv_of_that_transport_only(dns_server):
    server = dns_server(full_zone())
    assert resolve(resolver_for(server.nameserver), DOMAIN, transport="udp") == \
        [Target("udp", "127.0.0.12", 5071)]
    assert ("SRV", f"_sip._tcp.{DOMAIN}") not in server.queries()


@pytest.mark.parametrize("host, port, transport, expected", [
    ("192.0.2.7", None, None, Target("udp", "192.0.2.7", 5060)),
    ("192.0.2.7", 5099, "tcp", Target("tcp", "192.0.2.7", 5099)),
    ("[2001:db8::7]", None, None, Target("udp", "2001:db8::7", 5060)),
    ("2001:DB8::7", 5062, None, Target("udp", "2001:db8::7", 5062)),
])
def test_an_ip_literal_is_used_as_it_is_without_any_query(silent_nameserver, host, port, transport, expected):
    # A query to this nameserver would time out and fail the resolution.
    assert resolve(resolver_for(silent_nameserver, timeout=0.2), host, port=port, transport=transport) == \
        [expected]


def test_ip_literal_without_udp_in_the_preference_uses_the_first_preferred_transport(silent_nameserver):
    tcp_only = replace(PROFILE, transport_preference=("tcp",))
    assert resolve(resolver_for(silent_nameserver), "192.0.2.7", policy=tcp_only) == \
        [Target("tcp", "192.0.2.7", 5060)]


# --- errors the proxy turns into on_error(status, reason) --------------------------------

def test_a_domain_that_does_not_exist_is_404(dns_server):
    server = dns_server(full_zone())
    error = resolve_error(resolver_for(server.nameserver), f"nowhere.{DOMAIN}")
    assert (error.status, error.reason) == (404, "No DNS Resolution")
    assert f"nowhere.{DOMAIN}" in error.detail


def test_srv_targets_without_addresses_are_404(dns_server):
    server = dns_server(DnsZone().srv(f"_sip._udp.{DOMAIN}", f"ghost.{DOMAIN}", 5070))
    assert resolve_error(resolver_for(server.nameserver), DOMAIN).status == 404


def test_a_nameserver_that_does_not_answer_is_503_dns_timeout(silent_nameserver):
    error = resolve_error(resolver_for(silent_nameserver, timeout=0.3), DOMAIN)
    assert (error.status, error.reason) == (503, "DNS Timeout")


def test_the_next_nameserver_answers_when_the_first_is_silent(dns_server, silent_nameserver):
    server = dns_server(full_zone())
    resolver = resolver_for(silent_nameserver, server.nameserver, timeout=0.5)
    assert resolve(resolver, DOMAIN)[0] == Target("tcp", "127.0.0.11", 5070)


def test_a_refusing_nameserver_is_503_dns_failure(dns_server):
    server = dns_server(full_zone())   # answers .test only; refuses the rest
    error = resolve_error(resolver_for(server.nameserver), "example.org")
    assert (error.status, error.reason) == (503, "DNS Failure")


@pytest.mark.parametrize("options, status, reason", [
    ({"scheme": "tel"}, 416, "Unsupported URI Scheme"),
    ({"transport": "sctp"}, 478, "Unsupported Transport"),
    ({"transport": "ws"}, 478, "Unsupported Transport"),   # WebSocket: only toward a client's flow
    ({"scheme": "sips", "transport": "udp"}, 478, "Wrong URI Transport"),
])
def test_what_cannot_be_reached_over_our_transports(silent_nameserver, options, status, reason):
    error = resolve_error(resolver_for(silent_nameserver, timeout=0.2), DOMAIN, **options)
    assert (error.status, error.reason) == (status, reason)


def test_a_sips_uri_resolves_to_tls_through_naptr_sips_d2t_or_sips_srv(dns_server):
    """SIP.md §12: SIPS+D2T NAPTR records, else _sips._tcp SRV records."""
    server = dns_server(full_zone())
    assert resolve(resolver_for(server.nameserver), DOMAIN, scheme="sips") == [Target("tls", "127.0.0.11", 5072)]
    zone = DnsZone().srv(f"_sips._tcp.{DOMAIN}", f"tls1.{DOMAIN}", 5073).host(f"tls1.{DOMAIN}", "127.0.0.13")
    server = dns_server(zone)
    assert resolve(resolver_for(server.nameserver), DOMAIN, scheme="sips") == [Target("tls", "127.0.0.13", 5073)]


def test_use_dns_false_accepts_only_ip_literals(silent_nameserver):
    no_dns = replace(PROFILE, use_dns=False)
    resolver = resolver_for(silent_nameserver, timeout=0.2)
    assert resolve(resolver, "192.0.2.7", policy=no_dns) == [Target("udp", "192.0.2.7", 5060)]
    error = resolve_error(resolver, DOMAIN, policy=no_dns)
    assert (error.status, error.reason) == (478, "Destination Requires Unsupported DNS Query")


def test_an_ipv6_literal_is_refused_when_we_cannot_send_ipv6(silent_nameserver):
    error = resolve_error(resolver_for(silent_nameserver, ip_versions=(4,)), "2001:db8::7")
    assert (error.status, error.reason) == (478, "Destination Requires Unsupported IPv6")


# --- the cache --------------------------------------------------------------------------

def test_the_cache_answers_within_dns_cache_time_and_asks_again_after(dns_server):
    server = dns_server(full_zone())   # TTL 60
    clock = FakeClock()
    resolver = resolver_for(server.nameserver, clock=clock)
    policy = replace(PROFILE, dns_cache_time=30)
    first = resolve(resolver, DOMAIN, policy=policy)
    asked = len(server.queries())
    assert asked >= 4   # NAPTR, SRV, A, AAAA at least

    clock.now += 29.9
    assert resolve(resolver, DOMAIN, policy=policy) == first
    assert len(server.queries()) == asked   # nothing asked

    clock.now += 0.2   # 30.1 s: dns_cache_time is over
    assert resolve(resolver, DOMAIN, policy=policy) == first
    assert len(server.queries()) == 2 * asked


def test_the_cache_never_outlives_the_record_ttl(dns_server):
    zone = full_zone()
    zone.ttl = 5
    server = dns_server(zone)
    clock = FakeClock()
    resolver = resolver_for(server.nameserver, clock=clock)
    resolve(resolver, DOMAIN)   # dns_cache_time 300
    asked = len(server.queries())
    clock.now += 4.9
    resolve(resolver, DOMAIN)
    assert len(server.queries()) == asked
    clock.now += 0.2
    resolve(resolver, DOMAIN)
    asked_again = set(server.queries()[asked:])
    # The records, whose TTL is over; "no AAAA here" carries no SOA, so it stays cached for longer.
    assert asked_again == {("NAPTR", DOMAIN), ("SRV", f"_sip._tcp.{DOMAIN}"), ("SRV", f"_sip._udp.{DOMAIN}"),
                           ("A", f"tcp1.{DOMAIN}"), ("A", f"udp1.{DOMAIN}")}


def test_dns_cache_time_0_asks_every_time(dns_server):
    server = dns_server(full_zone())
    resolver = resolver_for(server.nameserver, clock=FakeClock())
    uncached = replace(PROFILE, dns_cache_time=0)
    resolve(resolver, DOMAIN, policy=uncached)
    asked = len(server.queries())
    resolve(resolver, DOMAIN, policy=uncached)
    assert len(server.queries()) == 2 * asked


def test_a_missing_domain_is_cached_too(dns_server):
    server = dns_server(full_zone())
    clock = FakeClock()
    resolver = resolver_for(server.nameserver, clock=clock)
    resolve_error(resolver, f"nowhere.{DOMAIN}")
    asked = len(server.queries())
    assert resolve_error(resolver, f"nowhere.{DOMAIN}").status == 404
    assert len(server.queries()) == asked


def test_simultaneous_resolutions_share_one_query_per_record_set(dns_server):
    server = dns_server(full_zone())
    resolver = resolver_for(server.nameserver, clock=FakeClock())
    uncached = replace(PROFILE, dns_cache_time=0)

    async def burst():
        return await asyncio.gather(*(resolver.resolve(SipDestination("sip", DOMAIN), uncached)
                                      for _ in range(20)))
    results = asyncio.run(burst())
    assert all(targets == results[0] for targets in results)
    queries = server.queries()
    assert len(queries) == len(set(queries))   # each (type, name) asked once
    assert ("NAPTR", DOMAIN) in queries


# --- what the proxy's failover test needs ---------------------------------------------------

def test_two_srv_priorities_on_one_address_give_two_targets_in_order(dns_server):
    zone = (DnsZone().srv(f"_sip._udp.{DOMAIN}", f"first.{DOMAIN}", 5081, priority=10)
            .srv(f"_sip._udp.{DOMAIN}", f"second.{DOMAIN}", 5082, priority=20)
            .host(f"first.{DOMAIN}", "127.0.0.1").host(f"second.{DOMAIN}", "127.0.0.1"))
    server = dns_server(zone)
    udp = replace(PROFILE, transport_preference=("udp",))
    assert resolve(resolver_for(server.nameserver), DOMAIN, policy=udp) == \
        [Target("udp", "127.0.0.1", 5081), Target("udp", "127.0.0.1", 5082)]
