"""Layer 1 of the SIP stack, syntax (RFC 3261 §7, §19, §20, §25): messages, URIs, framing.

Sans-I/O: bytes in, parsed objects out, and back to bytes; no sockets, no
asyncio, no clock.  `message` (requests and responses), `uri` (SIP/SIPS/tel
URIs, name-addr, Via), `framing` (Content-Length framing of a stream, CRLF
keep-alives), `errors` (ParseError, FramingError) and the optional C helper
`_speedups` that only cuts header lines (pure-Python fallback in `message`).

May import: the standard library only.
"""
