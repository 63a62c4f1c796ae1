"""RFC 3261 §17.2 server transactions as plain state machines, driven by a fake clock."""

from __future__ import annotations

import pytest

from oversipd.sip.transaction.server import (T1, T2, TIMER_H, TIMER_I, TIMER_J, TIMER_L, Match, State,
                                      TransactionTable, transaction_key)

FALLBACK = ("sip:bob@example.com", "fromtag", "call-1", 1, "SIP/2.0/UDP 10.0.0.1:5060")


def key(method: str, branch: str = "z9hG4bK-1", host: str = "10.0.0.1", port: int | None = 5060):
    return transaction_key(method, branch, (host, port), lambda: FALLBACK)


def new(table: TransactionTable, method: str, reliable: bool = False, **options):
    k = key(method, **options)
    assert table.match(k, method, None) == (Match.NEW, None)
    return table.create(k, method, reliable, None)


def test_keys_follow_rfc3261_17_2_3():
    assert key("ACK") == key("INVITE")               # an ACK matches its INVITE
    assert key("CANCEL") != key("INVITE")           # a CANCEL is a transaction of its own
    assert key("INVITE", host="EXAMPLE.com") == key("INVITE", host="example.com")
    assert key("INVITE", port=5062) != key("INVITE")
    assert key("INVITE", branch="z9hG4bK-2") != key("INVITE")
    # Without the magic cookie, RFC 2543's fields make the key.
    assert key("INVITE", branch="old-1") == key("INVITE", branch="old-2")
    assert key("INVITE", branch=None)[0] == "rfc2543"


def test_a_retransmitted_non_invite_gets_the_last_response_until_timer_j():
    table = TransactionTable()
    tx = new(table, "OPTIONS")
    assert tx.state is State.TRYING
    assert table.match(key("OPTIONS"), "OPTIONS", None) == (Match.RETRANSMISSION, tx)
    assert table.retransmission(tx) is None          # Trying: nothing to resend yet
    table.respond(tx, 100, b"100", None, now=0.0)
    assert tx.state is State.PROCEEDING and table.retransmission(tx) == b"100"
    table.respond(tx, 200, b"200", "tag", now=1.0)
    assert tx.state is State.COMPLETED and table.retransmission(tx) == b"200"
    assert table.next_deadline() == 1.0 + TIMER_J
    assert table.expire(1.0 + TIMER_J - 0.001) == [] and len(table) == 1
    assert table.expire(1.0 + TIMER_J) == []
    assert tx.state is State.TERMINATED and len(table) == 0
    assert table.match(key("OPTIONS"), "OPTIONS", None) == (Match.NEW, None)


def test_timer_j_is_zero_on_tcp():
    table = TransactionTable()
    tx = new(table, "REGISTER", reliable=True)
    table.respond(tx, 200, b"200", "tag", now=0.0)
    assert tx.state is State.TERMINATED and len(table) == 0


def test_a_second_final_response_raises():
    table = TransactionTable()
    tx = new(table, "OPTIONS")
    table.respond(tx, 200, b"200", "tag", now=0.0)
    with pytest.raises(RuntimeError):
        table.respond(tx, 404, b"404", "tag", now=0.0)


def test_invite_non_2xx_is_retransmitted_by_timer_g_until_the_ack():
    table = TransactionTable()
    tx = new(table, "INVITE")
    assert tx.state is State.PROCEEDING
    table.respond(tx, 486, b"486", "tag", now=0.0)
    assert tx.state is State.COMPLETED
    sent_at = []
    now = 0.0
    while now < 8.0:
        now = table.next_deadline()
        sent_at += [now for _ in table.expire(now)]
    # T1, then doubling up to T2: 0.5, 1.5, 3.5, 7.5, ...
    assert sent_at[:4] == [T1, 3 * T1, 7 * T1, 7 * T1 + T2]
    assert table.match(key("ACK"), "ACK", "tag") == (Match.ACK, tx)
    table.ack(tx, now)
    assert tx.state is State.CONFIRMED
    assert table.expire(now + 100 * T1 / 100) == []   # no Timer G any more
    table.ack(tx, now)                                 # a retransmitted ACK is absorbed
    assert tx.state is State.CONFIRMED
    table.expire(now + TIMER_I)
    assert tx.state is State.TERMINATED and len(table) == 0


def test_timer_h_ends_an_invite_whose_ack_never_comes():
    table = TransactionTable()
    tx = new(table, "INVITE")
    table.respond(tx, 404, b"404", "tag", now=10.0)
    now = 10.0
    while tx.state is State.COMPLETED:
        now = table.next_deadline()
        table.expire(now)
    assert now == 10.0 + TIMER_H and table.timeouts == 1 and len(table) == 0


def test_invite_over_tcp_is_not_retransmitted_and_ends_with_the_ack():
    table = TransactionTable()
    tx = new(table, "INVITE", reliable=True)
    table.respond(tx, 486, b"486", "tag", now=0.0)
    assert table.expire(TIMER_H - 1) == []
    table.ack(tx, 1.0)
    assert tx.state is State.TERMINATED


def test_a_2xx_moves_an_invite_to_accepted_and_its_ack_is_a_new_request():
    table = TransactionTable()
    tx = new(table, "INVITE")
    table.respond(tx, 180, b"180", "tag", now=0.0)
    table.respond(tx, 200, b"200", "tag", now=0.1)
    assert tx.state is State.ACCEPTED
    assert table.match(key("INVITE"), "INVITE", None) == (Match.RETRANSMISSION, tx)
    assert table.retransmission(tx) == b"200"
    assert table.match(key("ACK"), "ACK", "tag") == (Match.NEW, None)
    table.expire(0.1 + TIMER_L)
    assert len(table) == 0


def test_rfc2543_ack_matches_on_the_response_to_tag():
    table = TransactionTable()
    k = key("INVITE", branch="old")
    tx = table.create(k, "INVITE", False, None)
    table.respond(tx, 486, b"486", "ours", now=0.0)
    assert table.match(k, "ACK", "other") == (Match.NEW, None)
    assert table.match(k, "ACK", "ours") == (Match.ACK, tx)
    assert table.match(k, "INVITE", None) == (Match.RETRANSMISSION, tx)
    assert table.match(k, "INVITE", "in-dialog") == (Match.NEW, None)
