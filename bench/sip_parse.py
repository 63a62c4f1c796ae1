#!/usr/bin/env python3
"""µs per message: parse a typical 1 KB INVITE and read Via, From, To, CSeq and Call-ID as objects.

oversipd.sip next to the PyPI parsers `sipmessage` and `sippy`, in one run:
rounds interleaved (each round starts with the next parser, so that background
load hits all alike), the median per parser printed with its ratio to oversipd.
Before timing, each parser's reading of the message is checked against the
others' (same Via host and branch, From tag, To host, CSeq, Call-ID), so that
none is timed doing less than the others.

    python bench/sip_parse.py [--rounds 15] [--number 2000]

Times are CPU time of this process (time.process_time_ns), which other load
on the machine disturbs less than wall-clock time; still, final figures need a
quiet machine. "oversipd.sip" is with the C scanner of the header block
(oversipd/sip/syntax/_speedups.c), "(pure Python)" without it. oversipd reads the top
Via as `top_via` (the others are checked but not made objects), as sippy's
getHFBody("via") reads the first one only; sipmessage has only the whole list.

"Parse" is the message alone; "+ objects" also reads the top Via (host,
branch), From (tag, URI host), To (URI host), CSeq (number, method) and Call-ID.
oversipd checks the headers that matter for routing while it parses, so its
two columns differ little: its objects are built by then.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
from typing import Callable

SDP = (b"v=0\r\n"
       b"o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com\r\n"
       b"s=Session SDP\r\n"
       b"c=IN IP4 192.0.2.101\r\n"
       b"t=0 0\r\n"
       b"m=audio 49172 RTP/AVP 0 8 97 101\r\n"
       b"a=rtpmap:0 PCMU/8000\r\n"
       b"a=rtpmap:8 PCMA/8000\r\n"
       b"a=rtpmap:97 iLBC/8000\r\n"
       b"a=rtpmap:101 telephone-event/8000\r\n"
       b"a=fmtp:101 0-15\r\n"
       b"a=ptime:20\r\n"
       b"a=sendrecv\r\n")

# A typical INVITE as a proxy receives it: two Vias, a Record-Route, ~1 KB.
INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy.atlanta.example.com:5060;branch=z9hG4bK2d4790.1;received=192.0.2.11\r\n"
    b"Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;rport=5060;received=192.0.2.101\r\n"
    b"Max-Forwards: 69\r\n"
    b"Record-Route: <sip:proxy.atlanta.example.com;lr>\r\n"
    b"From: \"Alice Liddell\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@client.atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@client.atlanta.example.com;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n"
    b"Supported: replaces, timer, 100rel\r\n"
    b"User-Agent: ExampleSoftphone/4.2.1 (Linux)\r\n"
    b"Session-Expires: 1800\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP)

EXPECTED = ("proxy.atlanta.example.com", "z9hG4bK2d4790.1", "9fxced76sl", "atlanta.example.com",
            "biloxi.example.com", 1, "INVITE", "3848276298220188511@client.atlanta.example.com")


def oversipd_parsers(pure: bool = False) -> tuple[Callable, Callable]:
    import functools

    from oversipd.sip.syntax import message
    if pure:  # without the optional C scanner
        parse_message = functools.partial(message._parse, scan=message._scan_python)
    elif message._scan is message._scan_python:
        raise ImportError("oversipd.sip.syntax._speedups was not built")
    else:
        parse_message = message.parse_message

    def read(data: bytes) -> tuple:
        m = parse_message(data)
        via = m.top_via
        from_ = m.from_
        return (via.host, via.branch, from_.tag, from_.uri.host, m.to.uri.host, m.cseq,
                m.cseq_method, m.call_id)
    return parse_message, read


def sipmessage_parsers() -> tuple[Callable, Callable]:
    from sipmessage import Message

    def read(data: bytes) -> tuple:
        m = Message.parse(data)
        via = m.via[0]
        from_ = m.from_address
        cseq = m.cseq
        return (via.host, via.parameters["branch"], from_.parameters["tag"], from_.uri.host,
                m.to_address.uri.host, cseq.sequence, cseq.method, m.call_id)
    return Message.parse, read


def sippy_parsers() -> tuple[Callable, Callable]:
    from sippy.SipRequest import SipRequest

    def parse(data: bytes) -> object:
        return SipRequest(buf=data.decode())

    def read(data: bytes) -> tuple:
        m = SipRequest(buf=data.decode())
        via = m.getHFBody("via")
        from_ = m.getHFBody("from")
        cseq = m.getHFBody("cseq")
        return (via.getAddr()[0], via.getBranch(), from_.getTag(), from_.getUrl().host,
                m.getHFBody("to").getUrl().host, cseq.getCSeqNum(), cseq.getCSeqMethod(),
                str(m.getHFBody("call-id")))
    return parse, read


PARSERS = {"oversipd.sip": oversipd_parsers,
           "oversipd.sip (pure Python)": lambda: oversipd_parsers(pure=True),
           "sipmessage": sipmessage_parsers, "sippy": sippy_parsers}


def labelled(name: str) -> str:
    """A PyPI parser's name with its installed version."""
    if name.startswith("oversipd"):
        return name
    try:
        return f"{name} {importlib.metadata.version(name.split()[0].split('.')[0])}"
    except importlib.metadata.PackageNotFoundError:
        return name


def time_per_call(fn: Callable, data: bytes, number: int) -> float:
    """CPU µs per call of fn(data), over `number` calls."""
    start = time.process_time_ns()
    for _ in range(number):
        fn(data)
    return (time.process_time_ns() - start) / number / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=2000, help="messages per timing")
    args = parser.parse_args(argv)

    loaded = {}
    for name, make in PARSERS.items():
        try:
            loaded[name] = make()
        except ImportError as exc:
            print(f"{name}: not installed ({exc}); run `make bench-sip-parse`", file=sys.stderr)
            if name.startswith("oversipd.sip (pure"):
                return 1
    for name, (_, read) in loaded.items():
        got = read(INVITE)
        if got != EXPECTED:
            print(f"{name} reads {got}, expected {EXPECTED}", file=sys.stderr)
            return 1

    samples: dict[str, dict[str, list[float]]] = {n: {"parse": [], "objects": []} for n in loaded}
    names = list(loaded)
    for round_no in range(args.rounds):
        order = names[round_no % len(names):] + names[:round_no % len(names)]
        for name in order:
            parse, read = loaded[name]
            samples[name]["parse"].append(time_per_call(parse, INVITE, args.number))
            samples[name]["objects"].append(time_per_call(read, INVITE, args.number))

    medians = {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}
    ours = medians.get("oversipd.sip", medians["oversipd.sip (pure Python)"])["objects"]
    print(f"{len(INVITE)}-byte INVITE, median of {args.rounds} interleaved rounds of "
          f"{args.number} messages, CPU µs; Python {sys.version.split()[0]}")
    print("| parser | parse µs/msg | parse + Via/From/To/CSeq/Call-ID µs/msg | vs oversipd.sip |")
    print("|---|---:|---:|---:|")
    for name, m in medians.items():
        print(f"| {labelled(name)} | {m['parse']:.1f} | {m['objects']:.1f} | {m['objects'] / ours:.1f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
