"""Locating SIP servers (RFC 3263 §4): a destination -> the ordered (transport, ip, port) targets to try.

NAPTR -> SRV -> A/AAAA with dnspython's asyncio resolver; the proxy walks
the returned list on a 503 or a transport error (dns_failover_on_503).
Record sets are cached per (name, type): a resolution re-runs the RFC 2782
weighted selection on every call, so cached SRV records still spread load.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from ..proxy_settings import DnsSettings

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
# NAPTR services (RFC 3263 §4.1) and SRV prefixes (§4.2) per transport.
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIXES = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
SUPPORTED_TRANSPORTS = ("udp", "tcp", "tls")   # what oversipd sends over (ws/wss: only to flows)
# A negative answer (NXDOMAIN, no records of that type) without an SOA
# gives no TTL to honour (RFC 2308); cache it this long, still bounded by
# dns_cache_time, so that the common "no NAPTR here" is not asked per request.
NEGATIVE_TTL_WITHOUT_SOA = 60.0
MAX_CACHE_ENTRIES = 10000

# The statuses a proxy answers upstream when resolution fails (OverSIP's,
# except timeouts and server failures, which OverSIP does not distinguish).
NOT_FOUND = (404, "No DNS Resolution")
DNS_TIMEOUT = (503, "DNS Timeout")
DNS_FAILURE = (503, "DNS Failure")
UNSUPPORTED_SCHEME = (416, "Unsupported URI Scheme")
UNSUPPORTED_TRANSPORT = (478, "Unsupported Transport")
WRONG_TRANSPORT = (478, "Wrong URI Transport")
DNS_DISABLED = (478, "Destination Requires Unsupported DNS Query")
UNSUPPORTED_IP_VERSION = (478, "Destination Requires Unsupported IPv{version}")


class DnsError(Exception):
    """Resolution failed: `status` and `reason` are what the proxy answers upstream (on_error)."""

    def __init__(self, status_reason: tuple[int, str], detail: str) -> None:
        self.status, self.reason = status_reason
        self.detail = detail
        super().__init__(f"{self.status} {self.reason}: {detail}")


class Destination(Protocol):
    """What is resolved: a SipUri has these attributes (host without IPv6 brackets)."""

    scheme: str
    host: str
    port: int | None
    transport: str | None


@dataclass(frozen=True)
class Target:
    """One place to send the request to."""

    transport: str   # "udp", "tcp" or "tls"
    ip: str
    port: int


@dataclass(frozen=True)
class SipDestination:
    """A Destination from plain values, for callers without a SipUri."""

    scheme: str
    host: str
    port: int | None = None
    transport: str | None = None


class ResolvePolicy(Protocol):
    """The per-profile knobs (a [proxy.NAME]'s ProxySettings has them)."""

    use_dns: bool
    use_naptr: bool
    use_srv: bool
    transport_preference: tuple[str, ...]
    dns_cache_time: float


@dataclass(frozen=True)
class _CacheEntry:
    fetched_at: float
    ttl: float
    records: tuple[Any, ...]


class Rfc3263Resolver:
    """One per worker: resolves destinations, caching record sets per name and type."""

    def __init__(self, settings: DnsSettings, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 supported_transports: Sequence[str] = SUPPORTED_TRANSPORTS,
                 ip_versions: Sequence[int] = (4, 6)) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._supported = tuple(supported_transports)
        self.ip_versions = tuple(ip_versions)
        self._cache: dict[tuple[str, str], _CacheEntry] = {}
        self._in_flight: dict[tuple[str, str], asyncio.Future[tuple[Any, ...]]] = {}
        self._dns: dns.asyncresolver.Resolver | None = None

    async def resolve(self, destination: Destination, policy: ResolvePolicy) -> list[Target]:
        """The targets for `destination` in the order to try them; DnsError when there are none."""
        scheme = (destination.scheme or "").lower()
        if scheme not in ("sip", "sips"):
            raise DnsError(UNSUPPORTED_SCHEME, f"{scheme!r} URI")
        host = _bare_host(destination.host)
        if not host:
            raise DnsError(NOT_FOUND, "the destination has no host")
        transport = self._uri_transport(scheme, destination.transport)
        ip = _ip_literal(host)
        if ip is not None:
            self._check_ip_version(ip)
            transport = transport or self._default_transport(scheme, policy)
            return [Target(transport, str(ip), destination.port or DEFAULT_PORTS[transport])]
        if not policy.use_dns:
            raise DnsError(DNS_DISABLED, f"{host!r} is not an IP address and use_dns is false")
        lookup = _Lookup(self, policy)
        targets = await self._resolve_name(lookup, scheme, host, destination.port, transport)
        if targets:
            return _unique(targets)
        if lookup.failure is not None:
            raise DnsError(DNS_FAILURE, f"{host}: {lookup.failure}")
        raise DnsError(NOT_FOUND, f"no usable NAPTR, SRV, A or AAAA records for {host}")

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- RFC 3263 §4.1 / §4.2 ---------------------------------------------------

    async def _resolve_name(self, lookup: "_Lookup", scheme: str, host: str, port: int | None,
                            transport: str | None) -> list[Target]:
        if port is not None:
            # An explicit port: A/AAAA only (§4.2).
            return await lookup.addresses(host, transport or self._default_transport(scheme, lookup.policy),
                                          port)
        if transport is None and lookup.policy.use_naptr:
            targets = await self._via_naptr(lookup, scheme, host)
            if targets:
                return targets
        transports = [transport] if transport else self._dns_transports(scheme, lookup.policy)
        if lookup.policy.use_srv:
            targets = await self._via_srv(lookup, host, transports)
            if targets:
                return targets
        # No SRV: the host's own addresses on the default port (§4.2).
        transport = transport or self._default_transport(scheme, lookup.policy)
        return await lookup.addresses(host, transport, DEFAULT_PORTS[transport])

    async def _via_naptr(self, lookup: "_Lookup", scheme: str, host: str) -> list[Target]:
        """NAPTR records whose service we speak, in order/preference, each through its SRV."""
        allowed = self._dns_transports(scheme, lookup.policy)
        usable = []
        for record in await lookup.records(host, "NAPTR"):
            service = record.service.decode("ascii", "replace").upper()
            transport = NAPTR_SERVICES.get(service)
            if record.flags.lower() == b"s" and transport in allowed:
                usable.append((record.order, record.preference, transport, _name_text(record.replacement)))
        usable.sort(key=lambda item: (item[0], item[1]))
        targets: list[Target] = []
        for _order, _preference, transport, srv_name in usable:
            targets += await self._srv_targets(lookup, srv_name, transport)
        return targets

    async def _via_srv(self, lookup: "_Lookup", host: str, transports: Iterable[str]) -> list[Target]:
        """SRV per transport, in the preferred transport order."""
        targets: list[Target] = []
        for transport in transports:
            targets += await self._srv_targets(lookup, f"{SRV_PREFIXES[transport]}.{host}", transport)
        return targets

    async def _srv_targets(self, lookup: "_Lookup", srv_name: str, transport: str) -> list[Target]:
        records = [r for r in await lookup.records(srv_name, "SRV") if _name_text(r.target) != ""]
        ordered = order_srv_records(records, self._rng)
        per_record = await asyncio.gather(*(lookup.addresses(_name_text(r.target), transport, r.port)
                                            for r in ordered))
        return [target for targets in per_record for target in targets]

    # --- transports ---------------------------------------------------------------

    def _uri_transport(self, scheme: str, transport: str | None) -> str | None:
        """The URI's transport parameter as a Target transport, checked against what we speak."""
        if not transport:
            if scheme == "sips" and "tls" not in self._supported:
                raise DnsError(UNSUPPORTED_TRANSPORT, "a sips URI needs TLS")
            return None
        transport = transport.lower()
        if scheme == "sips":
            if transport == "udp":
                raise DnsError(WRONG_TRANSPORT, "a sips URI cannot use UDP")
            transport = "tls"   # sips over TCP is TLS (RFC 3261 §26.2.2)
        if transport not in self._supported:
            raise DnsError(UNSUPPORTED_TRANSPORT, f"transport={transport}")
        return transport

    def _dns_transports(self, scheme: str, policy: ResolvePolicy) -> list[str]:
        """Transports DNS may pick, best first: transport_preference for sip, TLS for sips."""
        if scheme == "sips":
            return ["tls"]
        return [t for t in policy.transport_preference if t in self._supported]

    def _default_transport(self, scheme: str, policy: ResolvePolicy) -> str:
        """RFC 3263 §4.1: UDP for sip (unless the profile excludes it), TLS for sips."""
        if scheme == "sips":
            return "tls"
        allowed = self._dns_transports(scheme, policy)
        if "udp" in allowed or not allowed:
            return "udp"
        return allowed[0]

    def _check_ip_version(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        if ip.version not in self.ip_versions:
            status, reason = UNSUPPORTED_IP_VERSION
            raise DnsError((status, reason.format(version=ip.version)), str(ip))

    # --- queries and the cache ------------------------------------------------------

    async def cached_records(self, name: str, rdtype: str, cache_time: float) -> tuple[Any, ...]:
        """Records of `name`/`rdtype`, from the cache while min(TTL, cache_time) has not passed."""
        key = (name, rdtype)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None and now < entry.fetched_at + min(entry.ttl, cache_time):
            return entry.records
        # Requests to one domain come in bursts: they share the query in flight.
        fetch = self._in_flight.get(key)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch(key, cache_time))
            self._in_flight[key] = fetch
            fetch.add_done_callback(lambda done: self._fetched(key, done))
        # A waiter that is cancelled (its request was) leaves the query to the others.
        return await asyncio.shield(fetch)

    async def _fetch(self, key: tuple[str, str], cache_time: float) -> tuple[Any, ...]:
        records, ttl = await self._query(*key)
        if cache_time > 0 and ttl > 0:
            self._store(key, _CacheEntry(self._clock(), ttl, records))
        return records

    def _fetched(self, key: tuple[str, str], fetch: asyncio.Future[tuple[Any, ...]]) -> None:
        self._in_flight.pop(key, None)
        if not fetch.cancelled():
            fetch.exception()   # retrieved, even when every waiter was cancelled

    def _store(self, key: tuple[str, str], entry: _CacheEntry) -> None:
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            now = entry.fetched_at
            for old_key in [k for k, e in self._cache.items() if e.fetched_at + e.ttl <= now]:
                del self._cache[old_key]
            while len(self._cache) >= MAX_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]   # the oldest stored
        self._cache.pop(key, None)
        self._cache[key] = entry

    async def _query(self, name: str, rdtype: str) -> tuple[tuple[Any, ...], float]:
        """One DNS query: (records, TTL); NXDOMAIN and no data are empty; errors raise."""
        resolver = self._resolver()
        try:
            answer = await resolver.resolve(dns.name.from_text(name), rdtype, search=False,
                                            raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as nxdomain:
            return (), _negative_ttl(_first_response(nxdomain))
        except dns.exception.SyntaxError:
            return (), 0.0   # not a domain name ("a..b", a label over 63 bytes): nothing to find
        except dns.exception.Timeout:
            raise DnsError(DNS_TIMEOUT, f"no answer for {name} {rdtype} "
                                        f"within {self._settings.timeout:g} s") from None
        except dns.resolver.NoNameservers as error:
            raise _ServerFailure(f"{name} {rdtype}: {error}") from None
        except dns.exception.DNSException as error:   # a bad name, a malformed answer...
            raise _ServerFailure(f"{name} {rdtype}: {error}") from None
        if answer.rrset is None:
            return (), _negative_ttl(answer.response)
        return tuple(answer.rrset), float(answer.rrset.ttl)

    def _resolver(self) -> dns.asyncresolver.Resolver:
        """dnspython's resolver, made on first use (in the worker, after the fork)."""
        if self._dns is None:
            self._dns = _make_resolver(self._settings)
        return self._dns


class _ServerFailure(Exception):
    """A query failed (SERVFAIL, REFUSED, bad name): that branch gives nothing, others may."""


class _Lookup:
    """One resolution: the queries it makes, the addresses it allows, the first failure it saw."""

    def __init__(self, resolver: Rfc3263Resolver, policy: ResolvePolicy) -> None:
        self.resolver = resolver
        self.policy = policy
        self.failure: str | None = None

    async def records(self, name: str, rdtype: str) -> tuple[Any, ...]:
        try:
            return await self.resolver.cached_records(name, rdtype, self.policy.dns_cache_time)
        except _ServerFailure as failure:
            self.failure = self.failure or str(failure)
            return ()

    async def addresses(self, host: str, transport: str, port: int) -> list[Target]:
        """A then AAAA (the IP versions we can send from) of `host`."""
        rdtypes = [rdtype for version, rdtype in ((4, "A"), (6, "AAAA"))
                   if version in self.resolver.ip_versions]
        answers = await asyncio.gather(*(self.records(host, rdtype) for rdtype in rdtypes))
        return [Target(transport, record.address, port) for records in answers for record in records]


def order_srv_records(records: Sequence[Any], rng: random.Random) -> list[Any]:
    """RFC 2782: lowest priority first; within a priority, weighted random order."""
    ordered: list[Any] = []
    for priority in sorted({record.priority for record in records}):
        # Zero weights first, as RFC 2782 asks, so they keep a small chance.
        pending = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while pending:
            pick = rng.randint(0, sum(r.weight for r in pending))
            running = 0
            for index, record in enumerate(pending):
                running += record.weight
                if running >= pick:
                    ordered.append(pending.pop(index))
                    break
    return ordered


def _make_resolver(settings: DnsSettings) -> dns.asyncresolver.Resolver:
    if settings.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in settings.nameservers]
    else:
        try:
            resolver = dns.asyncresolver.Resolver()   # /etc/resolv.conf
        except dns.resolver.NoResolverConfiguration as error:
            raise DnsError(DNS_FAILURE, f"no nameservers: {error}") from None
    # `timeout` is each nameserver's chance: a query may try them all in turn.
    resolver.timeout = settings.timeout
    resolver.lifetime = settings.timeout * max(1, len(resolver.nameservers))
    resolver.cache = None   # ours, with an injectable clock and the dns_cache_time bound
    return resolver


def _negative_ttl(response: Any) -> float:
    """RFC 2308: min(SOA TTL, SOA MINIMUM) of the authority section."""
    for rrset in getattr(response, "authority", None) or ():
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, *(soa.minimum for soa in rrset)))
    return NEGATIVE_TTL_WITHOUT_SOA


def _first_response(nxdomain: dns.resolver.NXDOMAIN) -> Any:
    try:
        return next(iter(nxdomain.responses().values()), None)
    except (AttributeError, KeyError, TypeError):
        return None


def _bare_host(host: str) -> str:
    """Lower-case, without IPv6 brackets or the final dot of a fully qualified name."""
    host = (host or "").strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") else host


@functools.lru_cache(maxsize=1024)   # the same next hops come again and again; ip_address() is slow
def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _name_text(name: dns.name.Name) -> str:
    """A record's domain name as we query it: lower-case, without the root dot ("" for the root)."""
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else ""


def _unique(targets: list[Target]) -> list[Target]:
    """The first occurrence of each target: a later duplicate would only repeat a failure."""
    return list(dict.fromkeys(targets))
