"""SIP over TLS (RFC 3261 §26.2, RFC 5246/8446): contexts from `[tls]`, accepted TLS connections, user events.

The handshake is asyncio's, on the stdlib `ssl` (`create_server(ssl=...,
ssl_handshake_timeout=...)`): a handshake that fails or takes too long
costs that connection only.  The session lives in this worker (PITFALLS:
a descriptor passed to another process cannot be decrypted there), so a
TLS connection is a flow that dies with its worker: the master keeps no
duplicate, and its client reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Callable

from ...callbacks import SipEvents, call, describe, is_cancellation
from ...logger import Logger
from ..transport_settings import TlsSettings
from .listeners import AcceptedConnection

_log = Logger("SIP")
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
VERIFY_CLIENT = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


# asyncio gives every TLS connection a read buffer of SSLProtocol.max_size,
# 256 KiB, allocated when the connection opens: 10 000 idle WSS clients held
# 2.8 GB (make bench-ws: 285 KiB per connection, against 9 KiB over plain WS).
# A TLS record carries at most 16 KiB, and a read loops until the kernel has
# nothing left: a smaller buffer costs a larger message one more read, no more.
TLS_READ_BUFFER = 32 * 1024


def small_read_buffers() -> None:
    """Every TLS connection this worker opens or accepts from now on reads into TLS_READ_BUFFER bytes."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """Our listeners' side: our chain, and the client certificates per verify_client."""
    small_read_buffers()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # No TLS 1.3 session tickets: with them about 1 in 120 new connections
    # (Python 3.11 asyncio, OpenSSL 3.0) never delivered the client's first
    # bytes, and was cut at handshake_timeout (measured: 0 in 600 without).
    # A SIP connection lives long; resuming its session saves little.
    context.num_tickets = 0
    renew_server_context(context, settings)
    return context


def renew_server_context(context: ssl.SSLContext, settings: TlsSettings) -> None:
    """The listener's context in place (asyncio's server holds it): what a reload changed in [tls]."""
    context.minimum_version = VERSIONS[settings.minimum_version]
    context.load_cert_chain(settings.certificate, settings.private_key)
    context.verify_mode = VERIFY_CLIENT[settings.verify_client]
    if settings.verify_client != "none":
        _load_cas(context, settings)


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """Outgoing TLS: the server's chain and name checked per verify_server; our certificate offered if we have one."""
    small_read_buffers()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = VERSIONS[settings.minimum_version]
    if settings.verify_server:
        _load_cas(context, settings)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.certificate and settings.private_key:
        context.load_cert_chain(settings.certificate, settings.private_key)
    return context


def _load_cas(context: ssl.SSLContext, settings: TlsSettings) -> None:
    if settings.ca_file:
        context.load_verify_locations(settings.ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH if context.check_hostname else ssl.Purpose.CLIENT_AUTH)


def peer_certificates(channel: asyncio.BaseTransport) -> list[bytes]:
    """The peer's certificates as DER, leaf first ([] when it sent none).

    Python 3.11's ssl gives the leaf only (the chain needs 3.13's
    get_unverified_chain, used when present).
    """
    ssl_object = channel.get_extra_info("ssl_object")
    if ssl_object is None:
        return []
    chain = getattr(ssl_object, "get_unverified_chain", None)
    if chain is not None:
        found = chain()
        if found:
            return [certificate if isinstance(certificate, bytes) else certificate.public_bytes()
                    for certificate in found]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


async def run_user_event(name: str, handler: Callable[..., Any], connection: Any, *args: Any) -> bool:
    """One of the user's connection events; one that raises is logged and refuses that connection only."""
    try:
        await call(handler, connection, *args)
    except BaseException as error:   # SystemExit too: the user's code must not end the worker
        if is_cancellation(error):
            raise
        _log.log_system_error(f"{name} ({describe(handler)}) raised; closing that connection:")
        _log.log_system_error(error)
        connection.close()
        return False
    return True


def start_after_handshake_event(connection: AcceptedConnection, then: Callable[[], None] | None = None) -> None:
    """SipEvents.on_client_tls_handshake for a connection just handshaken; it is not read until the event ran."""
    handler = SipEvents.client_tls_handler
    if handler is None or connection.channel is None:
        if then is not None:
            then()
        return
    connection.channel.pause_reading()

    async def event() -> None:
        assert connection.channel is not None
        await run_user_event("SipEvents.on_client_tls_handshake", handler, connection,
                             peer_certificates(connection.channel))
        channel = connection.channel
        if channel is not None and not channel.is_closing():
            if then is not None:
                then()
            channel.resume_reading()

    connection.server.spawn(event())


class TlsConnection(AcceptedConnection):
    """A client's TLS connection to one of our tls listeners: a flow that dies with this worker."""

    transport_kind = "tls"
    kept_by_master = False

    def connection_made(self, channel: asyncio.BaseTransport) -> None:
        super().connection_made(channel)
        start_after_handshake_event(self)
