"""RFC 4475 (SIP torture test messages) against the message layer (issue 10, SIP.md §11).

The messages are in tests/data/rfc4475/, written out from the RFC's text in its
own notation (tests/rfc4475.py turns them into wire bytes). Every valid one
parses and reads right; every invalid one raises ParseError — with `request`
set and a status when a response can be built from it — and never another
exception. Each message is also checked to survive a parse → write → parse
round trip byte for byte.

Syntactically invalid messages (RFC 4475 §3.1.2) and what the parser does:

  badinv01  empty Via params (";;,;,,")       ParseError "Bad Via", no request: dropped
  clerr     Content-Length larger than data   400 "Bad Content-Length"
  ncl       negative Content-Length           400 "Bad Content-Length"
  scalar02  CSeq beyond 2**31                 400 "Bad CSeq" (the CSeq line is copied as is);
            (its Max-Forwards 300 would also be "Bad Max-Forwards"; Expires is not read)
  scalarlg  response with a CSeq beyond 2**31 ParseError, no request: dropped
  quotbal   unterminated quoted display name  "Bad To", no request: dropped
  ltgtruri  <> around the Request-URI         400 "Bad Request-URI"
  lwsruri   LWS inside the Request-URI        400 "Bad Request-URI"
  lwsstart  several SP in the request line    400 "Bad Request-Line"
  trws      SP at the end of the request line 400 "Bad Request-Line"
  escruri   headers (?Route=) in the R-URI    400 "Bad Request-URI"
  badaspec  LWS inside <addr-spec> of To      "Bad To", no request: dropped
  baddn     unquoted display name with comma  "Bad From", no request: dropped
  bigcode   status code 4294967301            "Bad status line": dropped
  mismatch01/02  CSeq method is not the request's  400
  mcl01     two Content-Length values         400 "Bad Content-Length"
  multi01   two From/To/Call-ID/CSeq lines    "Multiple From", no request: dropped
  insuf     no From, To, Call-ID              "Missing From", no request: dropped

  (RFC 4475 asks for a 400 for badaspec, baddn, multi01 and insuf: our contract
  answers only requests whose Via, From, To, Call-ID and CSeq parsed, so these
  are dropped, which the issue allows.)

Semantically invalid messages: they parse, and the layer above decides.

  badvers   SIP/7.0                           ParseError status 505 with request (parse time)
  unkscm, novelsc  R-URI of an unknown scheme ParseError status 416 with request (parse time)
  zeromf    Max-Forwards: 0                   parses; max_forwards == 0 → 483 by the core
  bext01    unknown Require / Proxy-Require   parses; 420 by the core (SIP.md §11)
  invut     unknown Content-Type              parses; 415 is a UAS's business
  regaut01  unknown Authorization scheme      parses; header kept as text
  baddate   Date with a non-GMT time zone     parses; Date is never interpreted here
  regbadct  Contact URI with ? not in <>      parses; parse_name_addr(Contact) raises
  bcast     response Via to 255.255.255.255   parses; the transport decides where to send
  sdp01     Accept that excludes the body     parses; a UAS's business
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import rfc4475  # noqa: E402

from oversipd.sip import ParseError, Request, Response, parse_message, parse_name_addr  # noqa: E402

# name: (method or status, (R-URI scheme, user, host, port), top Via (transport, host, port,
#        branch), From tag, To tag, Call-ID, CSeq, Content-Length, body length)
VALID = {
    "wsinv": ("INVITE", ("sip", "vivekg", "chair-dnrc.example.com", None),
              ("UDP", "192.0.2.2", None, "390skdjuw"), "98asjd8", "1918181833n",
              "wsinv.ndaksdj@192.0.2.1", (9, "INVITE"), 150, 150),
    "intmeth": ("!interesting-Method0123456789_*+`.%indeed'~",
                ("sip", "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*", "example.com", None),
                ("TCP", "host1.example.com", None, "z9hG4bK-.!%66*_+`'~"),
                "_token~1'+`*%!-.", None, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
                (139122385, "!interesting-Method0123456789_*+`.%indeed'~"), 0, 0),
    "esc01": ("INVITE", ("sip", "sips%3Auser%40example.com", "example.net", None),
              ("UDP", "host5.example.net", None, "z9hG4bKkdjuw"), "938", None,
              "esc01.239409asdfakjkn23onasd0-3234", (234234, "INVITE"), 150, 150),
    "escnull": ("REGISTER", ("sip", None, "example.com", None),
                ("UDP", "host5.example.com", None, "z9hG4bKkdjuw"), "839923423", None,
                "escnull.39203ndfvkjdasfkjn3kj2l", (12, "REGISTER"), 0, 0),
    "esc02": ("RE%47IST%45R", ("sip", None, "registrar.example.com", None),
              ("TCP", "host.example.com", None, "z9hG4bK209823"), "f232jadfj23", None,
              "esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf", (29344, "RE%47IST%45R"), 0, 0),
    "lwsdisp": ("OPTIONS", ("sip", "user", "example.com", None),
                ("UDP", "funky.example.com", None, "z9hG4bKkdjuw"), "323", None,
                "lwsdisp.1234abcd@funky.example.com", (60, "OPTIONS"), 0, 0),
    "longreq": ("INVITE", ("sip", "user", "example.com", None),
                ("TCP", "sip33.example.com", None, None), "12" + "982" * 50 + "424", None,
                "longreq.one" + "really" * 20 + "longcallid", (3882340, "INVITE"), 150, 150),
    "dblreq": ("REGISTER", ("sip", None, "example.com", None),
               ("UDP", "192.0.2.125", None, "z9hG4bKkdjuw23492"), "43251j3j324", None,
               "dblreq.0ha0isndaksdj99sdfafnl3lk233412", (8, "REGISTER"), 0, 0),
    "semiuri": ("OPTIONS", ("sip", "user;par=u%40example.net", "example.com", None),
                ("UDP", "192.0.2.1", None, "z9hG4bKkdjuw"), "33242", None,
                "semiuri.0ha0isndaksdj", (8, "OPTIONS"), 0, 0),
    "transports": ("OPTIONS", ("sip", "user", "example.com", None),
                   ("UDP", "t1.example.com", None, "z9hG4bKkdjuw"), "323", None,
                   "transports.kijh4akdnaqjkwendsasfdj", (60, "OPTIONS"), 0, 0),
    "mpart01": ("MESSAGE", ("sip", "kumiko", "example.org", None),
                ("UDP", "127.0.0.1", 5070, "z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-"),
                "2fb0dcc9", None, "3d9485ad0c49859b@Q0EwMUEwMjc4N0Q2MQ..", (1, "MESSAGE"),
                336, 336),
    "unreason": (200, None, ("UDP", "192.0.2.198", None, "z9hG4bK1324923"), "11141343", "2229",
                 "unreason.1234ksdfak3j2erwedfsASdf", (35, "INVITE"), 154, 154),
    "noreason": (100, None, ("UDP", "192.0.2.105", None, "z9hG4bK2398ndaoe"), "39ansfi3",
                 "902jndnke3", "noreason.asndj203insdf99223ndf", (35, "INVITE"), 0, 0),
    # §3.2, §3.3, §3.4: valid syntax, semantics for the layers above.
    "badbranch": ("OPTIONS", ("sip", "user", "example.com", None),
                  ("UDP", "192.0.2.1", None, "z9hG4bK"), "33242", None,
                  "badbranch.sadonfo23i420jv0as0derf3j3n", (8, "OPTIONS"), 0, 0),
    "unksm2": ("REGISTER", ("sip", None, "example.com", None),
               ("UDP", "192.0.2.21", 5060, "z9hG4bKkdjuw"), "3234233", None,
               "unksm2.daksdj@hyphenated-host.example.com", (234902, "REGISTER"), 0, 0),
    "bext01": ("OPTIONS", ("sip", "user", "example.com", None),
               ("TLS", "fold-and-staple.example.com", None, "z9hG4bKkdjuw"), "242etr", None,
               "bext01.0ha0isndaksdj", (8, "OPTIONS"), 0, 0),
    "invut": ("INVITE", ("sip", "user", "example.com", None),
              ("UDP", "somehost.example.com", None, "z9hG4bKkdjuw"), "8392034", None,
              "invut.0ha0isndaksdjadsfij34n23d", (235448, "INVITE"), 40, 40),
    "regaut01": ("REGISTER", ("sip", None, "example.com", None),
                 ("TCP", "192.0.2.253", None, "z9hG4bKkdjuw"), "87321hj23128", None,
                 "regaut01.0ha0isndaksdj", (9338, "REGISTER"), 0, 0),
    "bcast": (200, None, ("UDP", "192.0.2.198", None, "z9hG4bK1324923"), "11141343", "2229",
              "bcast.0384840201234ksdfak3j2erwedfsASdf", (35, "INVITE"), 154, 154),
    "zeromf": ("OPTIONS", ("sip", "user", "example.com", None),
               ("UDP", "host1.example.com", None, "z9hG4bKkdjuw2349i"), "3ghsd41", None,
               "zeromf.jfasdlfnm2o2l43r5u0asdfas", (39234321, "OPTIONS"), 0, 0),
    "cparam01": ("REGISTER", ("sip", None, "example.com", None),
                 ("UDP", "saturn.example.com", 5060, "z9hG4bKkdjuw"), "DkfVgjkrtMwaerKKpe", None,
                 "cparam01.70710@saturn.example.com", (2, "REGISTER"), 0, 0),
    "cparam02": ("REGISTER", ("sip", None, "example.com", None),
                 ("UDP", "saturn.example.com", 5060, "z9hG4bKkdjuw"), "838293", None,
                 "cparam02.70710@saturn.example.com", (3, "REGISTER"), 0, 0),
    "regescrt": ("REGISTER", ("sip", None, "example.com", None),
                 ("UDP", "host5.example.com", None, "z9hG4bKkdjuw"), "8", None,
                 "regescrt.k345asrl3fdbv@192.0.2.1", (14398234, "REGISTER"), 0, 0),
    "sdp01": ("INVITE", ("sip", "user", "example.com", None),
              ("UDP", "60.0.0.1", None, "z9hG4bKkdjuw"), "234", None,
              "sdp01.ndaksdj9342dasdd", (8, "INVITE"), 150, 150),
    "inv2543": ("INVITE", ("sip", "UserB", "example.com", None),
                ("UDP", "iftgw.example.com", None, None), None, None,
                "inv2543.1717@ift.here.example.com", (56, "INVITE"), 105, 105),
    "baddate": ("INVITE", ("sip", "user", "example.com", None),
                ("UDP", "host.example.com", None, "z9hG4bKkdjuw"), "2234923", None,
                "baddate.239423mnsadf3j23lj42--sedfnm234", (1392934, "INVITE"), 150, 150),
    "regbadct": ("REGISTER", ("sip", None, "example.com", None),
                 ("UDP", "135.180.130.133", 5060, "z9hG4bKkdjuw"), "998332", None,
                 "regbadct.k345asrl3fdbv@10.0.0.1", (1, "REGISTER"), 0, 0),
}

# name: (reason, status, whether a response can be built (request set))
INVALID = {
    "badinv01": ("Bad Via", 400, False),
    "clerr": ("Bad Content-Length", 400, True),
    "ncl": ("Bad Content-Length", 400, True),
    "scalar02": ("Bad CSeq", 400, True),
    "scalarlg": ("Bad CSeq", 400, False),
    "quotbal": ("Bad To", 400, False),
    "ltgtruri": ("Bad Request-URI", 400, True),
    "lwsruri": ("Bad Request-URI", 400, True),
    "lwsstart": ("Bad Request-Line", 400, True),
    "trws": ("Bad Request-Line", 400, True),
    "escruri": ("Bad Request-URI", 400, True),
    "badaspec": ("Bad To", 400, False),
    "baddn": ("Bad From", 400, False),
    "badvers": ("Version Not Supported", 505, True),
    "mismatch01": ("CSeq method does not match the request's", 400, True),
    "mismatch02": ("CSeq method does not match the request's", 400, True),
    "bigcode": ("Bad status line", 400, False),
    "insuf": ("Missing From", 400, False),
    "unkscm": ("Unsupported URI Scheme", 416, True),
    "novelsc": ("Unsupported URI Scheme", 416, True),
    "multi01": ("Multiple From", 400, False),
    "mcl01": ("Bad Content-Length", 400, True),
}


def test_every_message_in_the_data_directory_is_classified():
    assert sorted(VALID) + sorted(INVALID) and set(rfc4475.names()) == set(VALID) | set(INVALID)


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_valid_torture_message_parses_and_reads_right(name):
    first, ruri, via, from_tag, to_tag, call_id, cseq, length, body_length = VALID[name]
    m = parse_message(rfc4475.load(name))
    if isinstance(first, int):
        assert isinstance(m, Response) and m.status == first
    else:
        assert isinstance(m, Request) and m.method == first
        assert (m.ruri.scheme, m.ruri.user, m.ruri.host, m.ruri.port) == ruri
    top = m.via[0]
    assert (top.transport, top.host, top.port, top.branch) == via
    assert (m.from_.tag, m.to.tag, m.call_id) == (from_tag, to_tag, call_id)
    assert (m.cseq, m.cseq_method) == cseq
    assert (m.content_length, len(m.body)) == (length, body_length)


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_valid_torture_message_round_trips(name):
    data = rfc4475.load(name)
    m = parse_message(data)
    assert m.to_bytes() == data[:len(m.to_bytes())]  # a datagram's trailing bytes are not part
    again = parse_message(m.to_bytes())
    assert again == m
    original = m.to_bytes()
    m.set_header("X-Edited", "yes")  # an edit adds that line, the others keep their bytes
    head, _, body = original.partition(b"\r\n\r\n")
    added = b"\r\nX-Edited: yes"
    if m.header("content-length") is None:  # written from then on (inv2543 has none)
        added += b"\r\nContent-Length: %d" % len(body)
    assert m.to_bytes() == head + added + b"\r\n\r\n" + body
    edited = parse_message(m.to_bytes())
    assert edited.header("x-edited") == "yes" and edited.headers("via") == m.headers("via")


@pytest.mark.parametrize("name", sorted(INVALID))
def test_an_invalid_torture_message_is_refused(name):
    reason, status, answerable = INVALID[name]
    with pytest.raises(ParseError) as err:
        parse_message(rfc4475.load(name))
    assert (err.value.reason, err.value.status) == (reason, status)
    if answerable:
        if reason != "Bad Request-URI":
            assert err.value.request.ruri is not None
        response = err.value.request.make_response(status, reason).to_bytes()
        assert response.startswith(f"SIP/2.0 {status} {reason}\r\n".encode())
    else:
        assert err.value.request is None


def test_wsinv_reads_through_its_whitespace_and_folding():
    m = parse_message(rfc4475.load("wsinv"))
    assert m.ruri.params == {"unknownparam": None}
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.from_.uri.user == "jdrosen" and m.to.uri.host == "chair-dnrc.example.com"
    assert m.max_forwards == 68
    assert [(v.transport, v.host, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239")]
    assert m.header("subject") == ""
    assert m.header("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.header("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contact = parse_name_addr(m.header("m"))
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.headers("route") == ["<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"]


def test_intmeth_keeps_unusual_characters():
    m = parse_message(rfc4475.load("intmeth"))
    assert m.ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.header("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escaped_uris_keep_their_escapes():
    m = parse_message(rfc4475.load("esc01"))
    assert m.to.uri.user == "%75se%72"
    contact = parse_name_addr(m.header("contact"))
    assert contact.uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    null = parse_message(rfc4475.load("escnull"))
    assert [parse_name_addr(c).uri.user for c in null.headers("contact")] == ["%00", "%00%00"]


def test_esc02_method_and_header_names_are_not_unescaped():
    m = parse_message(rfc4475.load("esc02"))
    assert len(m.headers("contact")) == 2 and m.header("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.from_.display_name == "%Z%45"


def test_dblreq_ignores_the_second_request_in_the_datagram():
    data = rfc4475.load("dblreq")
    m = parse_message(data)
    assert m.body == b"" and b"INVITE" not in m.to_bytes()


def test_semiuri_accept_spans_folded_lines():
    m = parse_message(rfc4475.load("semiuri"))
    assert m.headers("accept") == ["application/sdp", "application/pkcs7-mime", "multipart/mixed",
                                   "multipart/signed", "message/sip", "message/sipfrag"]


def test_transports_of_every_kind():
    m = parse_message(rfc4475.load("transports"))
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body_is_kept():
    m = parse_message(rfc4475.load("mpart01"))
    assert b"\r\n\x00\xff\x7f" in m.body and m.to_bytes().endswith(m.body)


def test_unreason_reason_phrases_keep_their_text():
    assert parse_message(rfc4475.load("unreason")).reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert parse_message(rfc4475.load("noreason")).reason == ""


def test_unksm2_other_uri_schemes_in_headers_are_opaque():
    m = parse_message(rfc4475.load("unksm2"))
    assert (m.to.uri.scheme, m.to.uri.opaque) == ("isbn", "2983792873")
    assert (m.from_.uri.scheme, str(m.from_.uri)) == ("http", "http://www.example.com")


def test_semantic_cases_parse_for_the_layers_above():
    assert parse_message(rfc4475.load("zeromf")).max_forwards == 0
    assert parse_message(rfc4475.load("bext01")).headers("proxy-require") == [
        "noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    assert parse_message(rfc4475.load("regaut01")).header("authorization") == \
        "NoOneKnowsThisScheme opaque-data=here"
    with pytest.raises(ParseError):
        parse_name_addr(parse_message(rfc4475.load("regbadct")).header("contact"))
    contact = parse_name_addr(parse_message(rfc4475.load("regescrt")).header("contact"))
    assert contact.uri.headers == {"Route": "%3Csip:sip.example.com%3E"}
    # cparam01: the addr-spec form's ;unknownparam belongs to the header, cparam02's to the URI
    plain = parse_name_addr(parse_message(rfc4475.load("cparam01")).header("contact"))
    angled = parse_name_addr(parse_message(rfc4475.load("cparam02")).header("contact"))
    assert (plain.params, plain.uri.params) == ({"unknownparam": None}, {})
    assert (angled.params, angled.uri.params) == ({}, {"unknownparam": None})
