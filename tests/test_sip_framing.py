"""SIP.md §8 — a stream is framed by Content-Length; CRLF keep-alives; size limit."""

import pytest

from oversipd.sip import KEEPALIVE, FramingError, StreamFramer, parse_message

MSG = (b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
       b"To: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 2 OPTIONS\r\nContent-Length: 3\r\n\r\nabc")


def test_messages_are_cut_at_content_length():
    framer = StreamFramer(65535)
    assert framer.feed(MSG + MSG + MSG[:10]) == [MSG, MSG]
    assert framer.feed(MSG[10:]) == [MSG]
    assert parse_message(MSG).body == b"abc"


def test_a_message_fed_byte_by_byte_comes_out_once():
    framer = StreamFramer(65535)
    out = []
    for i in range(len(MSG)):
        out += framer.feed(MSG[i:i + 1])
    assert out == [MSG] and framer.buffered == 0


def test_double_crlf_is_a_keepalive_and_single_crlfs_between_messages_are_skipped():
    framer = StreamFramer(65535)
    assert framer.feed(b"\r\n\r\n") == [KEEPALIVE]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n" + MSG + b"\r\n") == [KEEPALIVE, MSG]
    assert framer.feed(MSG) == [MSG]


def test_compact_and_folded_content_length():
    framer = StreamFramer(65535)
    compact = MSG.replace(b"Content-Length: 3", b"l:\r\n 3")
    assert framer.feed(compact) == [compact]


@pytest.mark.parametrize("data,status", [
    (MSG.replace(b"Content-Length: 3\r\n", b""), 400),
    (MSG.replace(b"Content-Length: 3", b"Content-Length: x"), 400),
    (MSG.replace(b"Content-Length: 3", b"Content-Length: 3\r\nl: 3"), 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", 400),
    (MSG.replace(b"Content-Length: 3", b"Content-Length: 70000"), 513),
    (b"OPTIONS sip:h SIP/2.0\r\n" + b"X: y\r\n" * 20000, 513),
])
def test_unframeable_streams_raise_framing_error(data, status):
    with pytest.raises(FramingError) as err:
        StreamFramer(65535).feed(data)
    assert err.value.status == status and err.value.reason


def test_a_large_message_sent_a_byte_at_a_time_comes_out_whole():
    body = b"x" * 60000
    message = MSG.replace(b"Content-Length: 3", b"Content-Length: %d" % len(body))[:-3] + body
    framer = StreamFramer(65535)
    out = []
    for i in range(len(message)):
        out += framer.feed(message[i:i + 1])
    assert out == [message]
    garbage = StreamFramer(65535)
    with pytest.raises(FramingError) as err:
        for _ in range(70000):
            garbage.feed(b"A")
    assert err.value.status == 513
