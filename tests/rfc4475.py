"""The RFC 4475 torture messages in tests/data/rfc4475/, as the bytes a peer sends.

The files use the RFC's own notation (RFC 4475 §2.1): lines end in LF here and
CRLF on the wire; `<allOneLine>...</allOneLine>` is one line (its line breaks
removed); `<hex>0D0A</hex>` are the octets written in hex; `<repeat
count=N>x</repeat>` is x written N times. Every other byte is as written
(UTF-8 where the RFC has non-ASCII text).
"""

import pathlib
import re

DATA = pathlib.Path(__file__).parent / "data" / "rfc4475"

_ALL_ONE_LINE = re.compile(r"<allOneLine>\n(.*?)\n</allOneLine>", re.S)
_REPEAT = re.compile(r"<repeat count=(\d+)>(.*?)</repeat>", re.S)
_HEX = re.compile(rb"<hex>([0-9A-Fa-f]*)</hex>")


def load(name: str) -> bytes:
    """The wire bytes of one torture message, by its RFC 4475 name ("wsinv")."""
    text = (DATA / f"{name}.txt").read_text(encoding="utf-8")
    text = _ALL_ONE_LINE.sub(lambda m: m.group(1).replace("\n", ""), text)
    text = _REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), text)
    data = text.replace("\n", "\r\n").encode("utf-8")
    return _HEX.sub(lambda m: bytes.fromhex(m.group(1).decode()), data)


def names() -> list[str]:
    return sorted(path.stem for path in DATA.glob("*.txt"))
