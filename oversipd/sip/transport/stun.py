"""STUN Binding (RFC 5389) on a UDP SIP socket: the keep-alive of RFC 5626 §4.4.2, sans-I/O.

A client behind NAT sends a Binding request to the SIP port and learns
from the answer's XOR-MAPPED-ADDRESS whether its NAT binding changed.
Only that is served: no authentication, no other method. The listener
hands over a datagram whose first byte cannot start a SIP message; this
module answers it (bytes out) or says it is not a STUN request (None).
"""

from __future__ import annotations

import ipaddress
import struct

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
HEADER = struct.Struct(">HHI12s")        # type, length, magic cookie, transaction id
ATTRIBUTE = struct.Struct(">HH")         # type, length
FAMILY_IPV4, FAMILY_IPV6 = 0x01, 0x02
COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")


def binding_response(data: bytes, address: tuple) -> bytes | None:
    """The Binding success response to a well-formed Binding request from `address`, else None."""
    transaction_id = _binding_transaction(data)
    if transaction_id is None:
        return None
    attribute = _xor_mapped_address(address[0], address[1], transaction_id)
    return HEADER.pack(BINDING_SUCCESS, len(attribute), MAGIC_COOKIE, transaction_id) + attribute


def _binding_transaction(data: bytes) -> bytes | None:
    """The transaction id of a well-formed RFC 5389 Binding request (its attributes are not read)."""
    if len(data) < HEADER.size:
        return None
    kind, length, cookie, transaction_id = HEADER.unpack_from(data)
    if kind != BINDING_REQUEST or cookie != MAGIC_COOKIE or length % 4 or HEADER.size + length != len(data):
        return None
    return transaction_id if _attributes_fit(data, HEADER.size) else None


def _attributes_fit(data: bytes, offset: int) -> bool:
    """Each attribute (type, length, value padded to 4 bytes) lies inside the message."""
    while offset < len(data):
        if offset + ATTRIBUTE.size > len(data):
            return False
        _, length = ATTRIBUTE.unpack_from(data, offset)
        offset += ATTRIBUTE.size + (length + 3) // 4 * 4
    return offset == len(data)


def _xor_mapped_address(ip: str, port: int, transaction_id: bytes) -> bytes:
    """RFC 5389 §15.2: the port XORed with the cookie's top half, the address with cookie (+ id)."""
    address = ipaddress.ip_address(ip.split("%")[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped   # an IPv4 client of a dual-stack socket: its own address
    packed = address.packed
    family = FAMILY_IPV4 if len(packed) == 4 else FAMILY_IPV6
    mask = (COOKIE_BYTES + transaction_id)[:len(packed)]
    xored = bytes(a ^ b for a, b in zip(packed, mask))
    value = struct.pack(">BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored
    return ATTRIBUTE.pack(XOR_MAPPED_ADDRESS, len(value)) + value
