"""Flows (RFC 5626 style): a client's connection (tcp, tls, ws, wss), reachable later from any worker.

A client behind NAT can be reached only over the connection it opened.
Each accepted connection is a flow: a random 64-bit id, registered in
the worker that accepted it.  A plain TCP one is handed to the master to
keep (oversipd.kept), so that it survives that worker's crash and is
adopted by the worker respawned in the slot; a TLS or WebSocket one holds
state only its worker has, and dies with it (its requests then get 430).  The proxy writes a flow token naming the
slot and the flow into the user part of its Record-Route or Path; a later
request routed through that Route leaves over the connection: directly when
this worker holds it, else passed to the slot's worker over the relay
(oversipd.sip.transport.relay), which writes it on the connection, or answers that
the flow is gone (then 430 Flow Failed upstream).  The client's responses
come back on the connection to the slot's worker and are relayed, by their
Via branch, to the worker that holds the client transaction.

The token is authenticated with a secret the master makes at import (every
worker inherits it): a forged or stale token is not a flow, so a request
cannot be steered into someone else's connection.  The exec into an
upgraded core makes a new secret; the connections close with the old
generation then anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from ... import kept

TOKEN_PREFIX = "ovf"
FLOW_FAILED = (430, "Flow Failed")
_PACKED = struct.Struct(">HQ")        # transport and slot, flow id
# A Path is written for the registrar's side: the token, not the URI's
# transport parameter, tells what the client's connection is.  Its two
# top bits of the slot field carry it (the token keeps its length).
TRANSPORTS = ("tcp", "tls", "ws", "wss")
_SLOT_BITS = 14
_MAC_BYTES = 8
_SECRET = os.urandom(32)


def kept_key(listener: str, flow_id: int) -> tuple[str, int]:
    """How the master knows a flow (oversipd.kept): its listener, to adopt it on, and its id."""
    return listener, flow_id


def new_flow_id() -> int:
    return int.from_bytes(os.urandom(8), "big")


def token(slot_id: int, flow_id: int, transport: str = "tcp") -> str:
    packed = _PACKED.pack(TRANSPORTS.index(transport) << _SLOT_BITS | slot_id, flow_id)
    mac = hmac.new(_SECRET, packed, hashlib.sha256).digest()[:_MAC_BYTES]
    return TOKEN_PREFIX + base64.urlsafe_b64encode(packed + mac).decode()


def decode(user: str | None) -> tuple[int, int, str] | None:
    """(slot, flow id, transport) named by a URI's user part, or None when it is not a token of ours."""
    if not user or not user.startswith(TOKEN_PREFIX):
        return None
    try:
        raw = base64.urlsafe_b64decode(user[len(TOKEN_PREFIX):])
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _PACKED.size + _MAC_BYTES:
        return None
    packed, mac = raw[:_PACKED.size], raw[_PACKED.size:]
    if not hmac.compare_digest(mac, hmac.new(_SECRET, packed, hashlib.sha256).digest()[:_MAC_BYTES]):
        return None
    field, flow_id = _PACKED.unpack(packed)
    return field & ((1 << _SLOT_BITS) - 1), flow_id, TRANSPORTS[field >> _SLOT_BITS]


@dataclass(frozen=True)
class FlowTarget:
    """Where a request routed by a flow token goes: a connection held by slot `slot_id`'s worker."""

    slot_id: int
    flow_id: int
    transport: str = "tcp"
    failure: tuple[int, str] = field(default=FLOW_FAILED)

    @property
    def ip(self) -> str:      # for the log lines that name a target
        return "flow"

    @property
    def port(self) -> int:
        return self.slot_id


class FlowTable:
    """The flows this worker holds: flow id -> accepted connection."""

    def __init__(self, slot_id: int) -> None:
        self.slot_id = slot_id
        self.connections: dict[int, Any] = {}
        self.tokens: dict[int, str] = {}   # made once per flow: an HMAC is not free

    def opened(self, connection: Any) -> int:
        """A connection accepted here (no flow id yet) or adopted from a predecessor (its flow id kept)."""
        adopted = connection.flow_id is not None
        flow_id = connection.flow_id if adopted else new_flow_id()
        self.connections[flow_id] = connection
        if not adopted and connection.kept_by_master:   # the master holds a duplicate of an adopted one already
            kept.keep(kept_key(connection.server.name, flow_id), connection.channel.get_extra_info("socket"))
        return flow_id

    def closed(self, flow_id: int, sock: Any, release: bool = True) -> None:
        """Closed here on purpose (or by the peer): end it for the master's duplicate too.

        Not when it was handed over to the next generation (`release` False):
        only our descriptor goes.
        """
        connection = self.connections.pop(flow_id, None)
        self.tokens.pop(flow_id, None)
        if sock is not None:
            try:
                # The master's duplicate would hold the connection open: the
                # peer must see it end now, whatever happens to our message.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if connection is not None and release and connection.kept_by_master:
            kept.release(kept_key(connection.server.name, flow_id))

    def token(self, flow: tuple[int, int], transport: str = "tcp") -> str:
        """The token naming a flow (slot, flow id), for the user part of our Route toward its client.

        Ours are made once each, with their connection's transport; another
        slot's (a trunk's request passed to us) each time, with `transport`.
        """
        slot_id, flow_id = flow
        if slot_id != self.slot_id:
            return token(slot_id, flow_id, transport)
        made = self.tokens.get(flow_id)
        if made is None:
            connection = self.connections.get(flow_id)
            transport = "tcp" if connection is None else connection.transport
            made = self.tokens[flow_id] = token(slot_id, flow_id, transport)
        return made

    def get(self, flow_id: int) -> Any:
        connection = self.connections.get(flow_id)
        if connection is None or connection.channel is None or connection.channel.is_closing():
            return None
        return connection


class RelayedFlow:
    """A flow held by another slot's worker, as a place to send to: what is sent goes over the relay."""

    # The hop to the holding worker is a datagram that dies with that worker
    # if it crashes before reading it: retransmitted as over UDP (the client
    # absorbs a duplicate over TCP like any retransmission).
    reliable = False

    def __init__(self, others: Any, target: FlowTarget) -> None:
        self.others = others   # what passes to the other workers (oversipd.sip.proxy.places)
        self.target = target
        self.flow = (target.slot_id, target.flow_id)

    @property
    def transport(self) -> str:
        return self.target.transport

    def send(self, data: bytes, address: Any) -> bool:
        return self.others.pass_to_flow(self.target, data)
