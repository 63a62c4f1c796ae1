"""The two errors of the SIP message layer."""

from __future__ import annotations

from typing import Any


class ParseError(ValueError):
    """A message, URI or header value that does not parse.

    `request` is set when enough of a request parsed (start line, Via, From,
    To, Call-ID, CSeq) for a response with `status` to be built: a
    message.Request, untyped here because that module imports this one.
    `reason` names the part that is wrong and fits a reason phrase ("Bad Via").
    """

    def __init__(self, reason: str, request: Any = None, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request
        self.status = status


class FramingError(ValueError):
    """A stream that cannot be framed into messages; the connection must be closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
