"""Issue 10 — generated messages round-trip; no input makes the parser or framer raise but their errors.

parse(serialise(m)) == m for generated requests and responses (random headers,
URIs, display names, parameters, bodies); random bytes and mutated real
messages into parse_message, the value parsers and StreamFramer raise nothing
but ParseError / FramingError. Sizes are kept small: the suite stays fast.
"""

import ipaddress
import string
import sys
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import rfc4475  # noqa: E402

from oversipd.sip import (KEEPALIVE, FramingError, NameAddr, ParseError, Request,  # noqa: E402
                          Response, SipUri, StreamFramer, Via, parse_message, parse_name_addr,
                          parse_uri, parse_via)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
USER_CHARS = string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/"
PARAM_CHARS = string.ascii_letters + string.digits + "-_.!~*'()[]/:&+$"
HEADER_CHARS = string.ascii_letters + string.digits + "-_.!~*'()[]/?:+$"
CORE_HEADERS = {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "content-length", "l",
                "max-forwards"}

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
lower_tokens = tokens.map(str.lower)
labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: ipaddress.IPv6Address(a).compressed)
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(1, 65535)
escapes = st.sampled_from(["%20", "%40", "%3A", "%00", "%7e"])
users = st.lists(st.text(USER_CHARS, min_size=1, max_size=8) | escapes, min_size=1,
                 max_size=3).map("".join)
uri_params = st.dictionaries(st.text(PARAM_CHARS.lower().replace("=", ""), min_size=1, max_size=8),
                             st.none() | st.text(PARAM_CHARS, max_size=8), max_size=3)
uri_headers = st.dictionaries(st.text(HEADER_CHARS, min_size=1, max_size=6),
                              st.text(HEADER_CHARS, max_size=6), max_size=2)


@st.composite
def sip_uris(draw, with_headers=True):
    scheme = draw(st.sampled_from(["sip", "sips"]))
    user = draw(st.none() | users)
    password = draw(st.none() | st.text(string.ascii_letters + string.digits + "&=+$,", max_size=6)) \
        if user is not None else None
    headers = draw(uri_headers) if with_headers else {}
    return SipUri(scheme, user, draw(hosts), draw(ports), draw(uri_params), headers, password)


tel_uris = st.builds(lambda n, p: SipUri("tel", n, None, None, p),
                     st.text(string.digits + "+-.()", min_size=1, max_size=12), uri_params)
uris = st.one_of(sip_uris(), tel_uris)

quoted = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from('"\\\t'),
                 max_size=12)
header_params = st.dictionaries(lower_tokens, st.none() | tokens | quoted.map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'), max_size=3)


@st.composite
def name_addrs(draw, tag=None):
    params = draw(header_params)
    params.pop("tag", None)
    if tag is not None:
        params["tag"] = tag
    display = draw(st.none() | quoted)
    return NameAddr(draw(uris), display, params)


@st.composite
def vias(draw):
    params = {"branch": "z9hG4bK" + draw(tokens)}
    params.update(draw(st.dictionaries(st.sampled_from(["received", "rport", "maddr", "ttl", "x"]),
                                       st.none() | ipv4 | ipv6 | tokens, max_size=2)))
    return Via(draw(hosts), draw(ports), draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"])),
               params)


header_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).map(str.strip)
extra_headers = st.lists(st.tuples(tokens.filter(lambda n: n.lower() not in CORE_HEADERS),
                                   header_values), max_size=5)
bodies = st.binary(max_size=64)


def core_headers(draw, method):
    via_list = draw(st.lists(vias(), min_size=1, max_size=3))
    from_ = draw(name_addrs(tag=draw(tokens)))
    to = draw(name_addrs(tag=draw(st.none() | tokens)))
    headers = [("From", str(from_)), ("To", str(to)), ("Call-ID", draw(tokens) + "@" + draw(hostnames)),
                ("CSeq", f"{draw(st.integers(0, 2 ** 31 - 1))} {method}")]
    return headers, via_list, from_, to


def with_vias(draw, headers, via_list):
    """The headers in any order, the Via lines in theirs at any places."""
    headers = list(draw(st.permutations(headers)))
    places = sorted(draw(st.lists(st.integers(0, len(headers)), min_size=len(via_list),
                                  max_size=len(via_list))))
    for place, via in reversed(list(zip(places, via_list))):
        headers.insert(place, ("Via", str(via)))
    return headers


@st.composite
def requests(draw):
    method = draw(st.sampled_from(["INVITE", "ACK", "OPTIONS", "BYE", "REGISTER"]) | tokens)
    headers, via_list, from_, to = core_headers(draw, method)
    if draw(st.booleans()):
        headers.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    headers = with_vias(draw, headers + draw(extra_headers), via_list)
    return Request(method, draw(sip_uris(with_headers=False)), headers, draw(bodies)), via_list, from_, to


@st.composite
def responses(draw):
    headers, via_list, from_, to = core_headers(draw, draw(tokens))
    headers = with_vias(draw, headers + draw(extra_headers), via_list)
    reason = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))
    return Response(draw(st.integers(100, 699)), reason, headers, draw(bodies)), via_list, from_, to


@FAST
@given(requests())
def test_a_generated_request_round_trips(generated):
    request, via_list, from_, to = generated
    parsed = parse_message(request.to_bytes())
    assert parsed == request
    assert parsed.ruri == request.ruri and str(parsed.ruri) == str(request.ruri)
    assert parsed.via == via_list and parsed.from_ == from_ and parsed.to == to
    assert parsed.body == request.body and parsed.to_bytes() == request.to_bytes()


@FAST
@given(responses())
def test_a_generated_response_round_trips(generated):
    response, via_list, from_, to = generated
    parsed = parse_message(response.to_bytes())
    assert parsed == response and (parsed.status, parsed.reason) == (response.status, response.reason)
    assert parsed.via == via_list and parsed.from_ == from_ and parsed.to == to


@FAST
@given(uris)
def test_a_generated_uri_round_trips(uri):
    assert parse_uri(str(uri)) == uri


@FAST
@given(requests(), st.data())
def test_edits_survive_a_round_trip(generated, data):
    request = generated[0]
    name, value = data.draw(st.tuples(tokens.filter(lambda n: n.lower() not in CORE_HEADERS),
                                      header_values))
    request = parse_message(request.to_bytes())
    request.insert_header("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKtop")
    request.set_header(name, value)
    request.body = data.draw(bodies)
    parsed = parse_message(request.to_bytes())
    assert parsed == request and parsed.via[0].host == "proxy.example.com"
    assert parsed.pop_header_value("via") == "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKtop"
    assert parse_message(parsed.to_bytes()).via == generated[1]


def exercise(message):
    """Read everything a caller may read; only ParseError may come out of lazily parsed parts."""
    message.to_bytes()
    for name in message.header_names():
        message.headers(name)
    again = parse_message(message.to_bytes())
    assert again == message


REAL = [rfc4475.load(name) for name in rfc4475.names()]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_parse_error(data):
    try:
        exercise(parse_message(data))
    except ParseError:
        pass


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b" ", b":", b";", b",", b"<", b">", b'"',
                                                b"\\", b"\x00", b"\xff", b"\r\n ", b"%", b"["]))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 40))]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_mutated_real_messages_raise_only_parse_error(data):
    try:
        exercise(parse_message(data))
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(["sip:", "<sip:a@b>;tag", '"x" <sip:a', "SIP/2.0/UDP ["]))
def test_value_parsers_raise_only_parse_error(text):
    for parse in (parse_uri, parse_name_addr, parse_via):
        try:
            str(parse(text))
        except ParseError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80) | mutated(), max_size=4),
       st.lists(st.integers(1, 200), min_size=1, max_size=5))
def test_random_streams_raise_only_framing_error(chunks, cuts):
    framer = StreamFramer(4096)
    stream = b"".join(chunks)
    try:
        at = 0
        for cut in cuts * 20:
            for item in framer.feed(stream[at:at + cut]):
                assert item is KEEPALIVE or isinstance(item, bytes)
            at += cut
            if at >= len(stream):
                break
    except FramingError as exc:
        assert exc.status in (400, 513)


@FAST
@given(st.lists(requests().map(lambda g: g[0].to_bytes()) | st.just(b"\r\n\r\n"), min_size=1,
                max_size=4),
       st.lists(st.integers(1, 300), min_size=1, max_size=5))
def test_a_stream_cut_anywhere_gives_back_its_messages(messages, cuts):
    stream = b"".join(messages)
    assume(len(stream) < 60000)
    framer = StreamFramer(65535)
    out, at, i = [], 0, 0
    while at < len(stream):
        cut = cuts[i % len(cuts)]
        out += framer.feed(stream[at:at + cut])
        at += cut
        i += 1
    assert out == [KEEPALIVE if m == b"\r\n\r\n" else m for m in messages]



@FAST
@given(name_addrs(tag=None), st.sampled_from(["tag", "TAG", "Tag"]), st.none() | tokens,
       st.booleans())
def test_the_tag_read_quickly_is_the_tag_parameter(na, spelling, tag, twice):
    """NameAddr.tag is read without splitting all parameters: the same value."""
    text = str(na) + ("" if tag is None else f";{spelling}={tag}") + (";tag=last" if twice else "")
    assert parse_name_addr(text).tag == parse_name_addr(text).params.get("tag")


@FAST
@given(st.sampled_from(["branch", "BRANCH", "Branch"]), tokens, st.booleans())
def test_the_branch_read_quickly_is_the_branch_parameter(spelling, branch, twice):
    text = f"SIP/2.0/UDP h;{spelling}={branch}" + (";rport;branch=z9hG4bKlast" if twice else "")
    assert parse_via(text).branch == parse_via(text).params.get("branch")
