"""What the proxy writes into a request it forwards: its Via with a branch, Record-Route or Path."""

from __future__ import annotations

import os
from typing import Any

from ..syntax.message import Request as Message

BRANCH_PREFIX = "z9hG4bKosd"    # the core's loop check knows it (sipcore.OUR_BRANCH_PREFIX)
RECORD_ROUTED_INITIAL = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
PEEK_MARK = b"branch=" + BRANCH_PREFIX.encode()
PEEK_PLACE_MAX = 12   # "<slot>g<parity>" and its dot


class OurHeaders:
    """A worker's Via, Record-Route and Path values, and its branches (which name its place)."""

    def __init__(self, place: str, local: dict[str, tuple[str, int]], advertised_host: str,
                 flows: Any) -> None:
        self.local = local                 # "udp"/"tcp" -> (host, port) of our listener
        self.advertised_host = advertised_host
        self.flows = flows                 # the worker's FlowTable: a flow's token
        self._branch_prefix = f"{BRANCH_PREFIX}{place}."
        self._branch_count = 0
        self._branch_salt = os.urandom(4).hex()

    def add(self, message: Message, record_route: bool, incoming: str, flow: tuple[int, int] | None,
            transport: str, branch: str, outgoing_token: str | None = None) -> None:
        """Our Via; Record-Route (twice when the transport changes here) or, for REGISTER, Path.

        `incoming` is the transport the request came in on, `flow` the (slot,
        flow id) of the client's connection it came over (the Route toward it
        names it).
        `outgoing_token` names the client's flow it leaves over (a phone
        registered over a connection): the Record-Route on that side carries
        it, so that the caller's in-dialog requests reach that connection too
        (RFC 5626 §5.3); then there is one Record-Route per side.
        """
        if record_route:
            method = message.method
            in_dialog = message.to.tag is not None
            if method == "REGISTER":
                message.insert_header("Path", self.route(transport, flow, outbound=flow is not None))
            elif (method in RECORD_ROUTED_INITIAL and not in_dialog) or (method == "NOTIFY" and in_dialog):
                if incoming != transport or outgoing_token:   # RFC 5658: one Record-Route per side
                    message.insert_header("Record-Route", self.route(incoming, flow))
                    flow = None
                message.insert_header("Record-Route", self.route(transport, flow, token=outgoing_token))
        message.insert_header("Via", self.via(transport, branch))

    def route(self, transport: str, flow: tuple[int, int] | None = None, outbound: bool = False,
              token: str | None = None) -> str:
        """Our Route URI; with the flow token of a client's connection as its user part (RFC 5626 §5.3)."""
        host, port = self.address(transport)
        if flow is not None:
            token = self.flows.token(flow, transport)
        user = "" if token is None else token + "@"
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{user}{host}:{port}{suffix};lr{';ob' if outbound else ''}>"

    def via(self, transport: str, branch: str) -> str:
        host, port = self.address(transport)
        return f"SIP/2.0/{transport.upper()} {host}:{port};branch={branch};rport"

    def address(self, transport: str) -> tuple[str, int]:
        host, port = self.local.get(transport) or next(iter(self.local.values()))
        if self.advertised_host:
            host = self.advertised_host
        return (f"[{host}]" if ":" in host else host), port

    def new_branch(self) -> str:
        self._branch_count += 1
        return f"{self._branch_prefix}{self._branch_salt}{self._branch_count:x}"


def place_of_branch(branch: str) -> str | None:
    """The place (relay.place_of) written in one of our branches, else None."""
    if not branch.startswith(BRANCH_PREFIX):
        return None
    place, dot, _ = branch[len(BRANCH_PREFIX):].partition(".")
    return place if dot and _is_place(place) else None


def peek_place(data: bytes) -> str | None:
    """The place named by the first `branch=` of a message not parsed yet (a response's top Via).

    Half the responses land on the other worker with 2 of them; parsing each
    twice was a measurable share of a proxied call.  None for anything odd:
    the parser and the proxy's StrayResponses take it.
    """
    start = data.find(PEEK_MARK)
    if start < 0:
        return None
    start += len(PEEK_MARK)
    dot = data.find(b".", start, start + PEEK_PLACE_MAX)
    if dot < 0:
        return None
    place = data[start:dot].decode("ascii", "replace")
    return place if _is_place(place) else None


def _is_place(text: str) -> bool:
    slot, g, parity = text.partition("g")
    return slot.isdigit() and bool(g) and parity in ("0", "1")
