"""Layer 5 of the SIP stack, the proxy (RFC 3261 §16, RFC 3263): Proxy(profile).route(request).

`engine` (a worker's forwarding: client transactions per branch, responses
upstream, CANCEL, Timer C), `dns` (RFC 3263 resolution with its cache).
`from oversipd.sip import Proxy` is the public name (SIP.md §10).

May import: every SIP layer below (syntax, transaction, transport, core),
`oversipd.sip.proxy_settings`, `oversipd.sip.counters`, the daemon's logger.
"""
