"""Layer 4 of the SIP stack, the core (RFC 3261 §8.2, §16.3): receive -> transaction -> on_request.

`sipcore` (SipCore: parse a received message, match or create its server
transaction, refuse what §11 refuses, call `SipEvents.on_request`, send
responses), `request` (the Request a script gets), `timers` (one loop
timer per transaction table: the asyncio side of the sans-I/O timers),
`limits` (admission control, SIP.md §15: what a worker takes on).

May import: `oversipd.sip.syntax`, `.transaction`, `.transport`,
`oversipd.sip.settings`, `oversipd.sip.counters`, and the daemon's lower
modules (callbacks, logger, resources).
"""
