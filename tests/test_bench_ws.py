"""make bench-ws's own parts that need no server: the SIP its clients write and read, its options, its tables.

The clients build SIP with bytes operations (bench/ws_clients.py): oversipd's
parser must accept what they send, and the 200 that B builds from a relayed
MESSAGE must be the response to it (same Via stack, Call-ID, CSeq, a To tag),
else the servers would drop the 200s and the bench would measure timeouts.
"""

from __future__ import annotations

import argparse
import math

import pytest

from bench.ws import idle_cases
from bench.ws_clients import header, message, ok_for, register, status_of
from bench.ws_report import idle_table
from bench.ws_runs import IdleRun, spread
from oversipd.sip.syntax.message import parse_message


def test_a_relayed_message_and_the_200_b_builds_from_it_parse_and_match():
    sent = message("a1", "b1", "a1x9", 7)
    relayed = sent.replace(b"Via: ", b"Via: SIP/2.0/WS 127.0.0.1:5060;branch=z9hG4bKproxy\r\nVia: ", 1)
    request, answer = parse_message(relayed), parse_message(ok_for(relayed))
    assert request.method == "MESSAGE" and request.body == b"hello"
    assert answer.status_code == 200 and status_of(ok_for(relayed)) == 200
    assert [str(v) for v in answer.via] == [str(v) for v in request.via]
    assert (answer.call_id, answer.cseq, answer.cseq_method) == (request.call_id, 7, "MESSAGE")
    assert answer.to.params.get("tag") == "b" and answer.from_.params.get("tag") == "a1x9"
    assert header(ok_for(relayed), b"Call-ID") == b"msg-a1x9"


def test_a_register_names_its_transport_in_via_and_contact():
    request = parse_message(register("i5", "i5x1", "wss"))
    assert request.method == "REGISTER" and request.via[0].transport.upper() == "WSS"
    assert "transport=wss" in request.header("Contact")


def test_idle_cases_are_transport_and_count_and_anything_else_is_refused():
    assert idle_cases("wss:1000, ws:10000") == [("wss", 1000), ("ws", 10000)]
    for wrong in ("tls:10", "wss:", "wss:0", "ws:ten"):
        with pytest.raises(argparse.ArgumentTypeError):
            idle_cases(wrong)


def test_clients_are_spread_over_processes_whole_and_in_full():
    assert spread(10000, 3) == [3334, 3333, 3333] and sum(spread(7, 4)) == 7


def test_the_idle_table_gives_no_figure_per_connection_for_a_server_that_died():
    def run(server: str, registered: int, died: bool) -> IdleRun:
        return IdleRun(server, "wss", 1000, registered=registered, failed=1000 - registered,
                       memory_before={"rss": 100 << 20, "pss": 50 << 20},
                       memory_after={"rss": 200 << 20, "pss": 100 << 20}, server_died=died, open_files_limit=20000)
    held, died = run("oversipd", 1000, False), run("kamailio", 400, True)
    assert held.per_connection("rss") == 100 * 1024 * 1024 / 1000 and math.isnan(died.per_connection("rss"))
    table = idle_table([held, died], argparse.Namespace(idle_hold=35.0, workers=2))
    oversipd_row, kamailio_row = (line for line in table.splitlines() if line.startswith("| wss"))
    assert "102.4 KiB" in oversipd_row and "**died**" in kamailio_row and "KiB |" not in kamailio_row
