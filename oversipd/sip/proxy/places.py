"""What passes between this worker and the other workers of the daemon, over the relay (transport/relay.py).

Other workers are named by their place (slot and generation parity).  To
them go: a request for a client's connection another worker holds (a flow),
a response whose branch names another worker's transaction, a trunk's
request whose Call-ID hashes to another worker (issue 23).  From them come
the same, and word that a flow we passed a request to is gone.
"""

from __future__ import annotations

import zlib
from typing import Any

from ..syntax.message import Request as Message, parse_message
from ..syntax.peek import call_id_of
from ..transport.flows import FLOW_FAILED, FlowTarget, RelayedFlow
from ..transport.listeners import AcceptedConnection, UdpListener
from ..transport.outgoing import ANOTHER_WORKERS_NEXT_HOP
from ..transport.relay import SlotRelay, place_of
from .headers import peek_place

# A flow's slot that nobody holds is being respawned (milliseconds) or gone:
# a request for it waits this long for the new worker before it gets 430.
FLOW_HOLDER_WAIT = 1.0
FLOW_RETRY = 0.02
HOLDER_OVERLOADED = (503, "Service Unavailable")
FLOW_SOURCE = "flow:"   # a relayed message that came in over a flow: "flow:SLOT:FLOW-ID:TRANSPORT"
NEXT_HOP_SOURCE = "next-hop"   # a relayed response that came in over another worker's next-hop connection


class OtherWorkers:
    """The relay's receiver for one worker's proxy engine, and what the engine passes to the other workers."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine   # the worker's ProxyEngine (engine.py, which imports this module)
        self.relay: SlotRelay | None = None   # bound by start()

    def start(self) -> None:
        self.relay = SlotRelay(self.engine.place, self.engine.loop, self)

    def close(self) -> None:
        if self.relay is not None:   # kept while retiring: the responses for what we still hold come here
            self.relay.close()
            self.relay = None

    # --- flows ---------------------------------------------------------------------------

    def flow_source(self, target: FlowTarget) -> tuple[Any, Any]:
        """The connection of a flow: ours, or another slot's reached over the relay."""
        if target.slot_id != self.engine.slot_id:
            return RelayedFlow(self, target), ("flow", target.flow_id)
        connection = self.engine.flows.get(target.flow_id)
        if connection is None:
            raise OSError("the client's connection (its flow) is gone")
        return connection, connection.peer

    def pass_to_flow(self, target: FlowTarget, request: bytes, waited: float = 0.0) -> bool:
        """To the worker holding the flow; while nobody holds its slot (a respawn), try again for a while."""
        relay = self.relay
        # The slot's worker of our own generation holds the flow (or is adopting it).
        holder = place_of(target.slot_id, self.engine.generation)
        if relay is not None and relay.pass_to_flow(holder, target.flow_id, request):
            return True
        if relay is not None and relay.backed_up(holder):
            # The flow is alive; its worker is overloaded: a 430 would send an Outbound client
            # to re-register (RFC 5626 §4.4), more load; a retry would only wait in line.
            self.fail_transaction_of(request, HOLDER_OVERLOADED)
        elif relay is None or waited >= FLOW_HOLDER_WAIT:
            self.fail_transaction_of(request, FLOW_FAILED)
        else:
            self.engine.loop.call_later(FLOW_RETRY, self.pass_to_flow, target, request, waited + FLOW_RETRY)
        return True   # sent as far as the transaction knows: flow_gone ends it if it never gets there

    def fail_transaction_of(self, request: bytes, outcome: tuple[int, str]) -> None:
        transaction = _transaction_of(request)
        if transaction is not None:
            self.engine.flow_gone(*transaction, outcome=outcome)

    def send_on_flow(self, flow_id: int, origin: str, request: bytes) -> None:
        """Another worker's request for a flow of ours: out over it, or tell that worker it is gone."""
        connection = self.engine.flows.get(flow_id)
        if connection is not None and connection.send(request, connection.peer):
            return
        transaction = _transaction_of(request)
        if transaction is not None and self.relay is not None:
            self.relay.tell_flow_gone(origin, *transaction)

    # --- passed on before parsing ---------------------------------------------------------

    def pass_on_foreign(self, data: bytes, source: Any, address: Any) -> bool:
        """Before any parsing: a response whose branch names another place goes there as it came."""
        place = peek_place(data)
        return place is not None and self.pass_to_place(place, data, source, address)

    def pass_on_by_call(self, data: bytes, source: Any, address: Any) -> bool:
        """A request read from a trunk goes to the worker its Call-ID hashes to (issue 23).

        One connection, or one UDP source address (a trunk from an SBC, a
        PBX), can carry thousands of calls a second; read and handled by the
        one worker that accepted it, or whose slot's socket the kernel hands
        that address to, they all ran on one core.  Once a connection or an
        address shows it is a trunk (AcceptedConnection.is_trunk,
        UdpTrunks), the reader passes each request on unparsed, every request
        of a call to the same worker (its retransmissions, CANCEL and non-2xx
        ACK meet their INVITE's transaction there), which answers over the
        flow, or from its own socket of the same UDP address.  A phone's or a
        browser's requests never get there: they stay with the worker that
        holds its connection, with what a script keeps on it (cvars, an
        asserted user), and with the slot its UDP address hashes to.
        False: ours, or the target is not there (handled here then).
        """
        if self.engine.slots < 2 or self.relay is None or not isinstance(source, (AcceptedConnection, UdpListener)) \
                or not source.is_trunk(address, self.engine.loop.time()):
            return False
        call_id = call_id_of(data)
        if call_id is None:
            return False
        slot_id = zlib.crc32(call_id) % self.engine.slots + 1
        return slot_id != self.engine.slot_id and \
            self.pass_to_place(place_of(slot_id, self.engine.generation), data, source, address)

    def pass_to_place(self, place: str, data: bytes, source: Any, address: Any) -> bool:
        """A message for another worker (its transaction, its call), to it; False: ours, or not passed on."""
        if place == self.engine.place or self.relay is None:
            return False
        name = self.relay_name_of(source)
        return name is not None and self.relay.pass_on(place, name, data, address)

    def relay_name_of(self, source: Any) -> str | None:
        """How the slot a message is passed to names where it came in: a UDP listener, a flow, a next hop."""
        if source.transport == "udp":
            return next((name for name, listener in self.engine.udp.items() if listener is source), None)
        flow = source.flow
        return NEXT_HOP_SOURCE if flow is None else f"{FLOW_SOURCE}{flow[0]}:{flow[1]}:{source.transport}"

    def relayed(self, listener: str, message: bytes, address: tuple[str, int]) -> None:
        """A message another slot's worker passed on: received here as if it had come in there."""
        if listener.startswith(FLOW_SOURCE):
            slot_id, flow_id, transport = listener[len(FLOW_SOURCE):].split(":")
            source: Any = RelayedFlow(self, FlowTarget(int(slot_id), int(flow_id), transport))
        elif listener == NEXT_HOP_SOURCE:
            source = ANOTHER_WORKERS_NEXT_HOP
        else:
            source = self.engine.udp.get(listener)
        if source is not None:
            self.engine.core.receive(message, source, address)

    def flow_gone(self, branch: str, method: str) -> None:
        """The relay's word that a flow we passed a request to is gone: the engine fails its transaction."""
        self.engine.flow_gone(branch, method)

    # --- failed authentications ------------------------------------------------------------

    def share_auth_failure(self, ip: str) -> None:
        """To every other worker: `auth_failures` counts per source IP across the daemon (SIP.md §15).

        One IP's requests reach several workers (its ports hash to different
        slots, a trunk's calls spread by Call-ID): counted where each landed,
        a guesser would get `auth_failures` tries per worker.
        """
        if self.relay is None:
            return
        for slot_id in range(1, self.engine.slots + 1):
            if slot_id != self.engine.slot_id:
                self.relay.tell_auth_failed(place_of(slot_id, self.engine.generation), ip)

    def auth_failed(self, ip: str) -> None:
        """Another worker's failed authentication from `ip`: counted here too."""
        core = self.engine.core
        core.admission.note_auth_failure(ip, core.loop.time())


def _transaction_of(data: bytes) -> tuple[str, str] | None:
    """(branch, method) of a request we sent, to fail its transaction; None for an ACK, which has none,
    and for a response (one going upstream over a flow: nothing of ours to fail)."""
    message = parse_message(data)
    if not isinstance(message, Message) or message.method == "ACK":
        return None
    return message.top_via.branch or "", message.method
