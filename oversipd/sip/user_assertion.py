"""OverSIP's UserAssertion module: P-Asserted-Identity (RFC 3325) for a connection whose user authenticated.

Once the script has authenticated a request that came over a client's
connection, `assert_connection(request)` ties its From URI to that
connection; `add_pai(request)` then gives the later requests of that
connection from that same URI a `P-Asserted-Identity`, and strips one a
client wrote itself from any other request.  The assertion lives with
the connection (in the worker that holds it) and ends with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from .core.request import Request
    from .syntax.message import Response
    from .syntax.uri import SipUri

ASSERTED = "asserted_user"   # the connection's attribute (transport.listeners.TcpConnection)


def assert_connection(message: "Union[Request, Response]") -> "SipUri | None":
    """Tie the request's From URI to the connection it came over; None over UDP or with P-Preferred-Identity.

    Given a response in a proxy callback (OverSIP's script asserts on the
    registrar's 2xx to a REGISTER), its request's.
    """
    request = _request_of(message)
    connection = request.source
    if getattr(connection, "flow_id", None) is None:
        return None   # UDP, or a connection we opened: nobody's own
    asserted = getattr(connection, ASSERTED, None)
    if asserted is not None:
        return asserted
    if request.header("P-Preferred-Identity") is not None:
        return None
    asserted = request.from_.uri.copy()
    asserted.params = {}
    setattr(connection, ASSERTED, asserted)
    return asserted


def revoke_assertion(message: "Union[Request, Response]") -> bool:
    """The connection's user is no longer asserted (e.g. a REGISTER of it failed); a response: its request's."""
    request = _request_of(message)
    if getattr(request.source, ASSERTED, None) is not None:
        setattr(request.source, ASSERTED, None)
    return True


def add_pai(request: "Request") -> bool | None:
    """P-Asserted-Identity for a request from the asserted user; others lose any they carry.

    True when added; None when the user is asserted but asked for another
    identity (P-Preferred-Identity): then none is added; False otherwise.
    """
    asserted = getattr(request.source, ASSERTED, None)
    sender = request.from_.uri.copy()
    sender.params = {}
    if asserted is None or sender != asserted:
        request.delete_header("P-Asserted-Identity")   # a client may not assert itself
        return False
    if request.header("P-Preferred-Identity") is not None:
        request.delete_header("P-Asserted-Identity")
        return None
    request.set_header("P-Asserted-Identity", f"<{asserted}>")
    return True


def _request_of(message: "Union[Request, Response]") -> "Request":
    """A request as it is; a response given to a proxy callback: the request it answers."""
    request = getattr(message, "request", message)
    if not hasattr(request, "source"):
        raise TypeError(f"a request, or a response given to a proxy callback, is needed: got {message!r}")
    return request
