"""SIP.md §9 / issue 10 point 1 — the SIP message layer: parse, read, edit, write back."""

import pytest

from oversipd.sip import (NameAddr, ParseError, Request, Response, SipUri, Via, parse_message,
                          parse_name_addr, parse_uri, parse_via, reason_phrase)


def sip(text: str) -> bytes:
    """A message written with \\n line ends in a test, sent with CRLF."""
    return text.replace("\n", "\r\n").encode()


INVITE = sip(
    "INVITE sip:bob@biloxi.example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\n"
    "v: SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bKnashds8;received=2001:db8::1,"
    " SIP/2.0/UDP 192.0.2.4;branch=z9hG4bK77ef4c2312983.1\n"
    "Max-Forwards: 70\n"
    'From: "Alice \\"A\\" Liddell" <sip:alice@atlanta.example.com>;tag=1928301774\n'
    "To: Bob <sip:bob@biloxi.example.com>\n"
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\n"
    "CSeq: 314159 INVITE\n"
    "Contact: <sip:alice@pc33.atlanta.example.com;transport=tcp>, \"Al, the other\" <sip:al@x.example>\n"
    "Record-Route: <sip:p1.example.com;lr>\n"
    "Subject: lunch, maybe\n"
    "NewHeader: first\n"
    "  line folded\n"
    "Content-Type: application/sdp\n"
    "Content-Length: 5\n"
    "\n"
    "v=0\n")


def test_a_request_reads_as_objects():
    m = parse_message(INVITE)
    assert isinstance(m, Request)
    assert m.method == "INVITE" and m.version == "SIP/2.0"
    assert (m.ruri.scheme, m.ruri.user, m.ruri.host, m.ruri.port) == (
        "sip", "bob", "biloxi.example.com", None)
    assert [v.host for v in m.via] == ["pc33.atlanta.example.com", "2001:db8::9", "192.0.2.4"]
    top = m.via[0]
    assert (top.protocol, top.transport, top.port, top.branch, top.rport, top.received) == (
        "SIP/2.0", "UDP", 5060, "z9hG4bK776asdhds", "", None)
    assert m.via[1].received == "2001:db8::1" and m.via[1].rport is None
    assert m.from_.display_name == 'Alice "A" Liddell'
    assert m.from_.tag == "1928301774" and m.from_.uri.user == "alice"
    assert m.to.display_name == "Bob" and m.to.tag is None
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (m.cseq, m.cseq_method) == (314159, "INVITE")
    assert m.max_forwards == 70
    assert m.content_length == 5 and m.body == b"v=0\r\n"


def test_header_names_are_case_insensitive_and_compact_forms_count():
    m = parse_message(INVITE)
    assert m.header("VIA") == m.header("v") == "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport"
    assert len(m.headers("via")) == 3
    assert m.header("l") == "5"
    assert m.header("missing") is None and m.headers("missing") == []


def test_list_headers_split_on_commas_outside_quotes_others_stay_whole():
    m = parse_message(INVITE)
    assert m.headers("contact") == ["<sip:alice@pc33.atlanta.example.com;transport=tcp>",
                                    '"Al, the other" <sip:al@x.example>']
    assert m.headers("subject") == ["lunch, maybe"]


def test_folded_lines_are_unfolded():
    assert parse_message(INVITE).header("newheader") == "first line folded"


def test_an_unedited_message_writes_back_its_bytes():
    assert parse_message(INVITE).to_bytes() == INVITE


def test_an_edit_rewrites_only_the_edited_lines():
    m = parse_message(INVITE)
    m.set_header("Subject", "dinner")
    out = m.to_bytes()
    assert b"Subject: dinner\r\n" in out
    assert out.replace(b"Subject: dinner", b"Subject: lunch, maybe") == INVITE
    assert parse_message(out).header("subject") == "dinner"


def test_set_insert_delete_headers():
    m = parse_message(INVITE)
    m.insert_header("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew")
    assert m.via[0].host == "proxy.example.com" and len(m.via) == 4
    assert m.to_bytes().split(b"\r\n")[1] == b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew"
    m.set_header("via", "SIP/2.0/UDP only.example.com")
    assert [v.host for v in m.via] == ["only.example.com"]
    m.delete_header("record-route")
    assert m.header("Record-Route") is None
    again = parse_message(m.to_bytes())
    assert again == m and [v.host for v in again.via] == ["only.example.com"]


def test_pop_header_value_removes_only_the_first_value():
    m = parse_message(INVITE)
    assert m.pop_header_value("via").startswith("SIP/2.0/UDP pc33")
    assert m.pop_header_value("via").startswith("SIP/2.0/TCP [2001:db8::9]")
    assert [v.host for v in m.via] == ["192.0.2.4"]
    assert parse_message(m.to_bytes()).headers("via") == [
        "SIP/2.0/UDP 192.0.2.4;branch=z9hG4bK77ef4c2312983.1"]
    assert m.pop_header_value("via") is not None and m.pop_header_value("via") is None


def test_a_new_body_rewrites_content_length():
    m = parse_message(INVITE)
    m.body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    again = parse_message(m.to_bytes())
    assert again.content_length == len(m.body) and again.body == m.body


def test_the_request_uri_is_assignable_and_editable():
    m = parse_message(INVITE)
    m.ruri.host = "192.0.2.9"
    m.ruri.port = 5080
    assert m.to_bytes().startswith(b"INVITE sip:bob@192.0.2.9:5080 SIP/2.0\r\n")
    m.ruri = "sips:carol@[2001:db8::2]:5061;transport=tcp"
    assert m.to_bytes().startswith(b"INVITE sips:carol@[2001:db8::2]:5061;transport=tcp SIP/2.0\r\n")


def test_make_response_copies_the_dialog_headers():
    request = parse_message(INVITE)
    response = request.make_response(180, to_tag="a6c85cf")
    assert isinstance(response, Response) and response.reason == "Ringing"
    parsed = parse_message(response.to_bytes())
    assert parsed.headers("via") == request.headers("via")
    assert parsed.from_ == request.from_ and parsed.to.tag == "a6c85cf"
    assert (parsed.call_id, parsed.cseq, parsed.cseq_method) == (request.call_id, 314159, "INVITE")
    assert parsed.headers("record-route") == ["<sip:p1.example.com;lr>"]
    assert parsed.content_length == 0 and parsed.header("contact") is None
    assert response.header("content-length") == "0"
    trying = request.make_response(100)
    assert trying.header("record-route") is None and trying.to.tag is None
    busy = request.make_response(486, "Busy Now", to_tag="x", headers=[("Retry-After", "60")],
                                 body=b"hi")
    parsed = parse_message(busy.to_bytes())
    assert (parsed.status, parsed.reason, parsed.header("retry-after"), parsed.body) == (
        486, "Busy Now", "60", b"hi")
    assert parsed.header("record-route") is None


def test_reason_phrases():
    assert reason_phrase(200) == "OK" and reason_phrase(430) == "Flow Failed"
    assert reason_phrase(483) == "Too Many Hops" and reason_phrase(499) == "Bad Request"


def test_a_response_parses():
    m = parse_message(sip("SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\n"
                          "To: <sip:c@d>;tag=2\nCall-ID: x\nCSeq: 2 BYE\nContent-Length: 0\n\n"))
    assert isinstance(m, Response) and (m.status, m.reason, m.cseq_method) == (200, "OK", "BYE")


def test_a_datagram_without_content_length_takes_the_rest_and_extra_bytes_are_ignored():
    base = "OPTIONS sip:h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: x\nCSeq: 2 OPTIONS\n"
    assert parse_message(sip(base + "\n") + b"abc").body == b"abc"
    assert parse_message(sip(base + "Content-Length: 1\n\n") + b"abc").body == b"a"


BASE = ("OPTIONS sip:h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\n"
        "To: <sip:c@d>\nCall-ID: x\nCSeq: 2 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n")


@pytest.mark.parametrize("old,new,reason,status", [
    ("Content-Length: 0", "Content-Length: 10", "Bad Content-Length", 400),
    ("Content-Length: 0", "Content-Length: -1", "Bad Content-Length", 400),
    ("Max-Forwards: 70", "Max-Forwards: seventy", "Bad Max-Forwards", 400),
    ("OPTIONS sip:h SIP", "OPTIONS sip:h:99999 SIP", "Bad Request-URI", 400),
    ("OPTIONS sip:h SIP/2.0", "OPTIONS sip:h SIP/3.0", "Version Not Supported", 505),
    ("CSeq: 2 OPTIONS", "CSeq: 2 INVITE", "CSeq method does not match the request's", 400),
    ("OPTIONS sip:h SIP", "OPTIONS http://h SIP", "Unsupported URI Scheme", 416),
    ("OPTIONS sip:h SIP/2.0", "OPTIONS  sip:h SIP/2.0", "Bad Request-Line", 400),
    ("OPTIONS sip:h SIP/2.0", "OPTIONS sip:h SIP/2.0 ", "Bad Request-Line", 400),
    ("OPTIONS sip:h SIP/2.0", "OPTIONS sip:h; lr SIP/2.0", "Bad Request-URI", 400),
    ("OPTIONS sip:h SIP/2.0", "OPTIONS sip:h?X=y SIP/2.0", "Bad Request-URI", 400),
    ("CSeq: 2 OPTIONS", "CSeq: 2147483648 OPTIONS", "Bad CSeq", 400),
])
def test_a_bad_part_gives_a_parse_error_a_response_can_be_built_from(old, new, reason, status):
    with pytest.raises(ParseError) as err:
        parse_message(sip(BASE.replace(old, new)))
    assert (err.value.reason, err.value.status) == (reason, status)
    assert isinstance(err.value.request, Request) and err.value.request.call_id == "x"
    if reason != "Bad Request-URI":  # the Request-URI is there when it parsed
        assert err.value.request.ruri is not None
    response = err.value.request.make_response(status, err.value.reason).to_bytes()
    assert response.startswith(f"SIP/2.0 {status} {reason}\r\n".encode())
    assert b"\r\nCall-ID: x\r\n" in response


@pytest.mark.parametrize("old,new", [
    ("Via: SIP/2.0/UDP h;branch=z9hG4bK1\n", ""),
    ("Via: SIP/2.0/UDP h", "Via: SIP/2.0/UDP h h"),
    ("From: <sip:a@b>;tag=1", "From: <sip:a@b"),
    ("To: <sip:c@d>\n", ""),
    ("To: <sip:c@d>\n", "To: <sip:c@d>\nTo: <sip:e@d>\n"),
    ("Call-ID: x", "Call-ID: x y"),
    ("CSeq: 2 OPTIONS", "CSeq: two OPTIONS"),
    ("OPTIONS sip:h SIP/2.0", "OPTIONS sip:h"),
    ("\n\n", "\n"),
])
def test_without_the_parts_a_response_needs_there_is_no_request(old, new):
    with pytest.raises(ParseError) as err:
        parse_message(sip(BASE.replace(old, new)))
    assert err.value.request is None


@pytest.mark.parametrize("text,parts", [
    ("sip:alice@atlanta.example.com", ("sip", "alice", None, "atlanta.example.com", None)),
    ("SIPS:alice:secret@[2001:db8::10]:5061;transport=TCP;lr?subject=hi&priority=urgent",
     ("sips", "alice", "secret", "2001:db8::10", 5061)),
    ("sip:192.0.2.1:5060", ("sip", None, None, "192.0.2.1", 5060)),
    ("sip:user;par=u%40example.net@example.com", ("sip", "user;par=u%40example.net", None,
                                                   "example.com", None)),
    ("tel:+1-201-555-0123;phone-context=example.com", ("tel", "+1-201-555-0123", None, None, None)),
])
def test_uris_decompose(text, parts):
    uri = parse_uri(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == parts
    assert str(uri) == text
    assert parse_uri(str(uri)) == uri


def test_uri_params_headers_and_transport():
    uri = parse_uri("sips:alice@[2001:db8::10]:5061;transport=TCP;lr?subject=hi&priority=urgent")
    assert uri.params == {"transport": "TCP", "lr": None}
    assert uri.transport == "tcp"
    assert uri.headers == {"subject": "hi", "priority": "urgent"}
    uri.params["maddr"] = "192.0.2.1"
    assert str(uri) == "sips:alice@[2001:db8::10]:5061;transport=TCP;lr;maddr=192.0.2.1?subject=hi&priority=urgent"


def test_a_uri_can_be_built():
    uri = SipUri("sip", "bob", "2001:db8::1", 5060, {"lr": None})
    assert str(uri) == "sip:bob@[2001:db8::1]:5060;lr"


@pytest.mark.parametrize("text", ["", "sip:", "sip:a@", "sip:a b@c", "sip:h:port", "sip:[zz]",
                                  "nocolon", "sip:h;a=b c", "sip:h?x"])
def test_bad_uris_raise_parse_error(text):
    with pytest.raises(ParseError):
        parse_uri(text)


def test_name_addr_forms():
    na = parse_name_addr('"A \\"q\\"" <sip:a@b;lr>;tag=x;Foo')
    assert (na.display_name, str(na.uri), na.tag, na.params) == ('A "q"', "sip:a@b;lr", "x",
                                                                  {"tag": "x", "foo": None})
    spec = parse_name_addr("sip:a@b;tag=y")
    assert (spec.display_name, str(spec.uri), spec.tag) == (None, "sip:a@b", "y")
    plain = parse_name_addr("Bob Smith<sip:b@c>")
    assert plain.display_name == "Bob Smith"
    built = NameAddr(parse_uri("sip:a@b"), 'The "Boss"', {"tag": "1"})
    assert parse_name_addr(str(built)) == built


def test_via_forms():
    via = parse_via("SIP / 2.0 / tcp [2001:db8::1] : 5061 ; branch = z9hG4bKx ; received=192.0.2.1;rport=5")
    assert (via.transport, via.host, via.port, via.branch, via.received, via.rport) == (
        "TCP", "2001:db8::1", 5061, "z9hG4bKx", "192.0.2.1", "5")
    built = Via("2001:db8::1", 5060, "udp", {"branch": "z9hG4bK1", "rport": None})
    assert str(built) == "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport"
    assert parse_via(str(built)) == built


def test_messages_can_be_built_and_round_trip():
    request = Request("MESSAGE", "sip:bob@example.com", [
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"), ("From", "<sip:a@b>;tag=1"),
        ("To", "<sip:bob@example.com>"), ("Call-ID", "c1"), ("CSeq", "1 MESSAGE")], b"hello")
    parsed = parse_message(request.to_bytes())
    assert parsed == request and parsed.body == b"hello" and parsed.content_length == 5


@pytest.mark.parametrize("data", [
    b"", b"\r\n\r\n", b"\xff\xfe\r\n\r\n", b"INVITE\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nVia: \xff\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\n: empty name\r\n\r\n",
    b"SIP/2.0 4294967301 better not break the receiver\r\n\r\n",
])
def test_garbage_raises_parse_error(data):
    with pytest.raises(ParseError):
        parse_message(data)


def test_arbitrary_bytes_in_header_values_round_trip():
    data = INVITE.replace(b"lunch, maybe", b"l\xc3\xbcnch \xff\xfe")
    m = parse_message(data)
    assert m.to_bytes() == data
    m.set_header("X-Copy", m.header("subject"))
    assert b"X-Copy: l\xc3\xbcnch \xff\xfe\r\n" in m.to_bytes()


def test_an_edit_cannot_inject_header_lines():
    m = parse_message(INVITE)
    for name, value in [("Subject", "hi\r\nVia: SIP/2.0/UDP evil"), ("X", "a\nb"), ("X: Y", "z")]:
        with pytest.raises(ValueError):
            m.set_header(name, value)
    assert m.to_bytes() == INVITE


def test_messages_take_attributes_of_the_transport():
    m = parse_message(INVITE)
    m.source = ("192.0.2.1", 5060)
    assert m.source == ("192.0.2.1", 5060)


def test_a_copy_writes_what_the_message_writes_and_edits_stay_apart():
    original = parse_message(INVITE)
    original.pop_header_value("Via")     # edited before the copy, like a proxied request after fix_nat
    twin = original.copy()
    assert twin == original and twin.to_bytes() == original.to_bytes()
    twin.insert_header("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKcopy")
    twin.ruri.params["transport"] = "tcp"
    twin.to.tag = "copied"
    twin.set_header("Max-Forwards", "69")
    assert original.to_bytes() == parse_message(original.to_bytes()).to_bytes()
    assert original.via[0].host == "2001:db8::9" and original.max_forwards == 70
    assert "transport" not in original.ruri.params and original.to.tag is None
    again = parse_message(twin.to_bytes())
    assert again.via[0].branch == "z9hG4bKcopy" and twin.to.tag == "copied"
    assert again.ruri.transport == "tcp" and again.max_forwards == 69
    assert again.body == original.body == b"v=0\r\n"


def test_a_copied_uri_gives_back_its_text_until_edited():
    uri = parse_uri("sip:bob@[2001:db8::1]:5070;transport=udp;lr?subject=x")
    twin = uri.copy()
    assert str(twin) == str(uri) == "sip:bob@[2001:db8::1]:5070;transport=udp;lr?subject=x"
    twin.port = 5071
    assert str(twin) == "sip:bob@[2001:db8::1]:5071;transport=udp;lr?subject=x" and uri.port == 5070
    twin.port = 5070
    assert str(twin) == str(uri)      # back as parsed: the text is given back
    twin.headers["priority"] = "urgent"
    assert "priority" not in uri.headers and str(twin).endswith("&priority=urgent")


def test_a_copied_response_keeps_its_status_line():
    response = parse_message(sip("SIP/2.0 180 Ringing\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\n"
                                 "From: <sip:a@example.com>;tag=1\nTo: <sip:b@example.com>;tag=2\n"
                                 "Call-ID: c1\nCSeq: 1 INVITE\nContent-Length: 0\n\n"))
    twin = response.copy()
    twin.pop_header_value("Via")
    assert (twin.status, twin.reason) == (180, "Ringing") and twin.header("via") is None
    assert response.top_via.host == "a.example.com"
