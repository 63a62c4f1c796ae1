"""Reading one header of a message before it is parsed: what a worker needs to pass it on unparsed."""

from __future__ import annotations

_CALL_ID_NAMES = (b"\r\ncall-id:", b"\r\ni:")   # RFC 3261 §7.3.3: `i` is its compact form


def call_id_of(data: bytes) -> bytes | None:
    """The Call-ID value of a whole message, or None when it has none (the parser will say why).

    Header names are case-insensitive: the exact `Call-ID:` that nearly
    every peer writes is looked for first, in the bytes as they are; anything
    else costs a lower-cased copy of the header block.
    """
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end + 2]
    start = head.find(b"\r\nCall-ID:")
    if start >= 0:
        start += len(b"\r\nCall-ID:")
    else:
        lowered = head.lower()
        for name in _CALL_ID_NAMES:
            start = lowered.find(name)
            if start >= 0:
                start += len(name)
                break
        else:
            return None
    stop = head.find(b"\r\n", start)
    value = head[start:stop].strip()
    return value or None
