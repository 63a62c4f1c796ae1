"""Layer 3 of the SIP stack, transports (RFC 3261 §18): sockets, connections, flows, the relay.

`listeners` (a worker's UDP sockets and TCP connections, what the core
calls a `Source`), `sockets` (the per-slot SO_REUSEPORT UDP sockets the
master keeps), `flows` (a client's connection reachable from every
worker, RFC 5626 style), `relay` (messages passed between workers over
unix datagrams), `tls` (ssl contexts, TLS connections), `websocket` (SIP
over WebSocket, RFC 7118, on websockets' sans-I/O protocol), `outgoing`
(connections to next hops, TCP and TLS).

May import: `oversipd.sip.syntax`, `oversipd.sip.counters`,
`oversipd.sip.transport_settings`, and the daemon's lower modules (logger,
callbacks, kept, listeners, reexec).
"""
