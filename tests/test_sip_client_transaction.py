"""RFC 3261 §17.1 client transactions as plain state machines, driven by a fake clock."""

from __future__ import annotations

from oversipd.sip.transaction.client import (TIMER_D, TIMER_K, ClientState, ClientTable, Timeout,
                                             Verdict, make_ack)
from oversipd.sip.syntax.message import parse_message
from oversipd.sip.transaction.server import T1, T2

BRANCH = "z9hG4bKosd-test-1"


def request(method: str = "INVITE", branch: str = BRANCH):
    return parse_message(
        f"{method} sip:bob@10.0.0.2:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\n"
        "Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-upstream\r\n"
        "Route: <sip:10.0.0.3;lr>\r\n"
        "Max-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:bob@example.com>\r\nCall-ID: call-1\r\n"
        f"CSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n".encode())


def response(status: int, method: str = "INVITE", branch: str = BRANCH):
    return parse_message(
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\n"
        "Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-upstream\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1\r\n"
        f"Call-ID: call-1\r\nCSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n".encode())


def start(table: ClientTable, method: str = "INVITE", reliable: bool = False, timeout: float = 32.0):
    message = request(method)
    return table.create(BRANCH, message, message.to_bytes(), reliable, timeout, now=0.0)


def resend_times(table: ClientTable, until: float, step: float = 0.25) -> list[float]:
    """When the table hands back the request to send again, on a clock ticking by `step`."""
    times, now = [], 0.0
    while now <= until:
        resend, _ = table.expire(now)
        times += [now for _ in resend]
        now += step
    return times


def test_responses_match_by_branch_and_cseq_method():
    table = ClientTable()
    tx = start(table)
    assert table.match(response(180)) is tx
    assert table.match(response(200, method="CANCEL")) is None   # a CANCEL has its own transaction
    assert table.match(response(180, branch="z9hG4bKosd-other")) is None


def test_an_invite_over_udp_is_resent_by_timer_a_doubling_until_timer_b():
    table = ClientTable()
    tx = start(table, timeout=64 * T1)
    assert tx.state is ClientState.CALLING
    assert resend_times(table, until=20.0) == [T1, 3 * T1, 7 * T1, 15 * T1, 31 * T1]


def test_timer_b_times_the_invite_out():
    table = ClientTable()
    tx = start(table, timeout=4.0)
    resend, timeouts = table.expire(3.9)
    assert timeouts == []
    _, timeouts = table.expire(4.0)
    assert timeouts == [(tx, Timeout.B, None)]
    assert tx.state is ClientState.TERMINATED and len(table) == 0
    assert table.next_deadline() is None


def test_a_provisional_response_stops_timers_a_and_b():
    table = ClientTable()
    tx = start(table, timeout=4.0)
    assert table.receive(tx, 100, now=0.2) is Verdict.PASS
    assert tx.state is ClientState.PROCEEDING
    assert table.next_deadline() is None          # timer C is the proxy's
    assert table.expire(100.0) == ([], [])


def test_a_non_2xx_final_response_completes_the_invite_and_retransmissions_are_absorbed_until_timer_d():
    table = ClientTable()
    tx = start(table)
    table.receive(tx, 180, now=0.1)
    assert table.receive(tx, 486, now=1.0) is Verdict.PASS
    assert tx.state is ClientState.COMPLETED
    assert table.receive(tx, 486, now=2.0) is Verdict.ABSORB
    assert table.match(response(486)) is tx
    table.expire(1.0 + TIMER_D - 0.01)
    assert tx.state is ClientState.COMPLETED
    table.expire(1.0 + TIMER_D)
    assert tx.state is ClientState.TERMINATED and table.match(response(486)) is None


def test_a_2xx_ends_the_invite_transaction_at_once():
    table = ClientTable()
    tx = start(table)
    assert table.receive(tx, 200, now=0.3) is Verdict.PASS
    assert tx.state is ClientState.TERMINATED and len(table) == 0


def test_over_tcp_nothing_is_resent_and_completed_lasts_no_time():
    table = ClientTable()
    tx = start(table, reliable=True)
    assert resend_times(table, until=10.0) == []
    table.receive(tx, 404, now=1.0)
    assert tx.state is ClientState.TERMINATED


def test_a_non_invite_is_resent_by_timer_e_up_to_t2_then_every_t2_in_proceeding():
    table = ClientTable()
    tx = start(table, method="OPTIONS", timeout=64 * T1)
    assert resend_times(table, until=7.5) == [T1, 3 * T1, 7 * T1, 7 * T1 + T2]
    table.receive(tx, 100, now=7.6)
    assert tx.state is ClientState.PROCEEDING
    resend, _ = table.expire(7 * T1 + 2 * T2)
    assert resend == [(tx, tx.data)]


def test_timer_f_times_the_non_invite_out_and_timer_k_ends_a_completed_one():
    table = ClientTable()
    late = start(table, method="OPTIONS", timeout=2.0)
    _, timeouts = table.expire(2.0)
    assert timeouts == [(late, Timeout.F, None)]
    table = ClientTable()
    tx = start(table, method="OPTIONS")
    table.receive(tx, 200, now=1.0)
    assert tx.state is ClientState.COMPLETED
    assert table.receive(tx, 200, now=1.5) is Verdict.ABSORB
    table.expire(1.0 + TIMER_K)
    assert tx.state is ClientState.TERMINATED


def test_the_ack_of_a_non_2xx_is_built_from_the_request_and_the_response_to():
    ack = make_ack(request(), response(486))
    assert ack.method == "ACK" and str(ack.ruri) == "sip:bob@10.0.0.2:5060"
    assert [str(via) for via in ack.via] == [f"SIP/2.0/UDP 10.0.0.1:5060;branch={BRANCH}"]
    assert ack.headers("route") == ["<sip:10.0.0.3;lr>"]
    assert ack.to.tag == "b1" and ack.from_.tag == "a1"
    assert ack.call_id == "call-1" and (ack.cseq, ack.cseq_method) == (7, "ACK")
    assert parse_message(ack.to_bytes()).method == "ACK"
