"""The slot relay (oversipd/sip/relay.py): a UDP response that reached the wrong worker is handed to
the worker whose slot is in its branch, over a real abstract Unix datagram socket.

A burst far larger than the kernel's queue for such a socket (net.unix.max_dgram_qlen, 10 by
default) must all arrive, in order: under load a peer's responses for the other slot come in
bursts, and each one dropped here cost a call (the proxy retransmits its INVITE at T1 and the UAS
takes it for a new request).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from oversipd.sip.transport.relay import SlotRelay

BURST = 500
PEER = ("127.0.0.1", 5062)


class Receiver:
    """A slot's relay end that records what reaches it and says when `expected` have."""

    def __init__(self, slot_id: int, loop: asyncio.AbstractEventLoop, expected: int) -> None:
        self.got: list[tuple[str, bytes, tuple[str, int]]] = []
        self.expected = expected
        self.all_in = loop.create_future()
        self.relay = SlotRelay(str(slot_id), loop, self)
        assert self.relay.bound

    def relayed(self, listener: str, datagram: bytes, address: tuple[str, int]) -> None:
        self.got.append((listener, datagram, address))
        if len(self.got) == self.expected and not self.all_in.done():
            self.all_in.set_result(None)


class Ignoring:
    """A sending slot's end: nothing is passed to it in these tests."""

    def relayed(self, *_: object) -> None: ...
    def send_on_flow(self, *_: object) -> None: ...
    def flow_gone(self, *_: object) -> None: ...


@pytest.fixture
def loop():
    loop = asyncio.SelectorEventLoop()   # what a worker runs
    yield loop
    loop.close()


@pytest.fixture
def slots():
    """Two slot numbers no other test process uses (the name holds our parent's pid, not ours)."""
    base = os.getpid() * 10
    return base + 1, base + 2


def datagram(n: int) -> bytes:
    return f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKosd2.{n}\r\n\r\n".encode()


def test_a_burst_for_a_busy_slot_arrives_whole_and_in_order(loop, slots):
    sender = SlotRelay(str(slots[0]), loop, Ignoring())
    receiver = Receiver(slots[1], loop, BURST)
    try:
        # The receiving worker is busy: its loop does not run while the burst is passed on.
        passed = [sender.pass_on(str(slots[1]), "sip_udp", datagram(n), PEER) for n in range(BURST)]
        assert all(passed), f"{passed.count(False)} of {BURST} not passed on"
        loop.run_until_complete(asyncio.wait_for(receiver.all_in, 10))
        assert receiver.got == [("sip_udp", datagram(n), PEER) for n in range(BURST)]
    finally:
        sender.close()
        receiver.relay.close()


def test_a_slot_without_a_worker_is_not_passed_on(loop, slots):
    sender = SlotRelay(str(slots[0]), loop, Ignoring())
    try:
        assert not sender.pass_on(str(slots[1]), "sip_udp", datagram(0), PEER)
    finally:
        sender.close()


def test_a_respawned_worker_of_the_slot_gets_what_follows(loop, slots):
    sender = SlotRelay(str(slots[0]), loop, Ignoring())
    first = Receiver(slots[1], loop, 1)
    try:
        assert sender.pass_on(str(slots[1]), "sip_udp", datagram(0), PEER)
        loop.run_until_complete(asyncio.wait_for(first.all_in, 10))
        first.relay.close()                     # that worker is gone ...
        second = Receiver(slots[1], loop, 1)    # ... and its successor binds the name again
        try:
            assert sender.pass_on(str(slots[1]), "sip_udp", datagram(1), PEER)
            loop.run_until_complete(asyncio.wait_for(second.all_in, 10))
            assert second.got == [("sip_udp", datagram(1), PEER)]
        finally:
            second.relay.close()
    finally:
        sender.close()
        first.relay.close()
