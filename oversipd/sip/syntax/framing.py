"""Stream framing: a TCP byte stream cut into SIP messages by their Content-Length.

Sans-I/O: the transport feeds the bytes it read and gets back whole messages
(and a KEEPALIVE marker for each RFC 5626 §4.4.1 double-CRLF ping, which it
answers with a single CRLF). A FramingError means the stream cannot be
resynchronised: the transport answers `status` when it can and closes.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import FramingError

__all__ = ["StreamFramer", "KEEPALIVE", "FramingError"]


class _Keepalive:
    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE: Final = _Keepalive()

_CONTENT_LENGTH_RE = re.compile(rb"^(?:content-length|l)[ \t]*:([^\r\n]*)", re.M | re.I)
_FOLD_RE = re.compile(rb"\r\n[ \t]+")
_DIGITS_RE = re.compile(rb"[ \t]*([0-9]{1,10})[ \t]*\Z")
# A request line (token SP anything SP SIP/x.y) or a status line.
_START_LINE_RE = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+ [^ \r\n]+ SIP/|SIP/")


class StreamFramer:
    """Cut a byte stream into messages; one framer per connection."""

    # _searched, _start_checked and _total remember what is known of the message
    # being received, so that a peer sending it a byte at a time costs linear work.
    __slots__ = ("max_message_size", "_buffer", "_searched", "_start_checked", "_total")

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._searched = 0            # bytes searched for the end of the header block
        self._start_checked = False   # the start line looked like SIP
        self._total: int | None = None  # the message's length, once its header block is in

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a complete message."""
        return len(self._buffer)

    def pending(self) -> bytes:
        """The bytes not yet framed; after a FramingError, the offending message's start."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[bytes | _Keepalive]:
        """Add received bytes; return the messages (and keep-alive pings) they complete."""
        buffer = self._buffer
        buffer += data
        out: list[bytes | _Keepalive] = []
        while buffer:
            if buffer[:2] == b"\r\n":
                if len(buffer) < 4 and b"\r\n\r\n".startswith(bytes(buffer)):
                    break  # maybe the start of a ping: wait for the rest
                if buffer[:4] == b"\r\n\r\n":
                    out.append(KEEPALIVE)
                    del buffer[:4]
                else:
                    del buffer[:2]  # a CRLF between messages
                continue
            message = self._next_message(buffer)
            if message is None:
                break
            out.append(message)
        return out

    def _next_message(self, buffer: bytearray) -> bytes | None:
        total = self._total
        if total is None:
            total = self._header_block(buffer)
            if total is None:
                return None
        if len(buffer) < total:
            return None
        message = bytes(buffer[:total])
        del buffer[:total]
        self._searched = 0
        self._start_checked = False
        self._total = None
        return message

    def _header_block(self, buffer: bytearray) -> int | None:
        """The length of the message the buffer starts with, once its header block is in."""
        limit = self.max_message_size
        searched = self._searched
        end = buffer.find(b"\r\n\r\n", max(0, searched - 3))
        if end < 0:
            if not self._start_checked:
                line_end = buffer.find(b"\r\n", max(0, searched - 1))
                if line_end >= 0:
                    self._check_start_line(buffer, line_end)
            self._searched = len(buffer)
            if len(buffer) > limit:
                raise FramingError(513, "Message Too Large")
            return None
        if not self._start_checked:
            self._check_start_line(buffer, end)
        head = bytes(buffer[:end])
        if b"\r\n " in head or b"\r\n\t" in head:
            head = _FOLD_RE.sub(b" ", head)
        values = _CONTENT_LENGTH_RE.findall(head)
        if len(values) != 1:
            raise FramingError(400, "Missing Content-Length" if not values
                               else "Multiple Content-Length")
        m = _DIGITS_RE.match(values[0])
        if m is None:
            raise FramingError(400, "Bad Content-Length")
        total = end + 4 + int(m.group(1))
        if total > limit:
            raise FramingError(513, "Message Too Large")
        self._total = total
        return total

    def _check_start_line(self, buffer: bytearray, stop: int) -> None:
        if not _START_LINE_RE.match(buffer, 0, stop):
            raise FramingError(400, "Bad Request")
        self._start_checked = True
