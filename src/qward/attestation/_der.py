"""A minimal DER reader for the vendor X.509 extensions pyca/cryptography leaves undecoded.

AMD's VCEK carries its TCB as DER INTEGERs under private OIDs and Intel's PCK certificate its
FMSPC and SVNs in a nested SEQUENCE; ``cryptography`` hands both over as raw extension bytes.
Only definite-length, single-byte-tag elements are read (all these extensions use), and every
malformed input raises ``AttestationError`` with the caller's check name, never ``IndexError``.
"""

from __future__ import annotations

from qward.errors import AttestationError

__all__ = [
    "TAG_IA5STRING",
    "TAG_INTEGER",
    "TAG_OCTET_STRING",
    "TAG_OID",
    "TAG_SEQUENCE",
    "elements",
    "oid_string",
    "single",
    "unsigned_integer",
]

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_IA5STRING = 0x16
TAG_SEQUENCE = 0x30
# No vendor extension we read comes near this; it bounds the work a hostile length can cause.
_MAX_LENGTH_BYTES = 3


def _element(data: bytes, pos: int, check: str) -> tuple[int, bytes, int]:
    """The (tag, value, next position) of the element starting at ``pos``."""
    if pos + 2 > len(data):
        raise AttestationError("DER element is truncated", check=check)
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise AttestationError("DER multi-byte tags are not used here", check=check)
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= _MAX_LENGTH_BYTES or pos + count > len(data):
            raise AttestationError("DER length is malformed", check=check)
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise AttestationError("DER value runs past its container", check=check)
    return tag, data[pos : pos + length], pos + length


def elements(data: bytes, *, check: str) -> list[tuple[int, bytes]]:
    """Every (tag, value) element laid end to end in ``data``."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, value, pos = _element(data, pos, check)
        out.append((tag, value))
    return out


def single(data: bytes, tag: int, *, check: str) -> bytes:
    """The value of ``data``, which must be exactly one element with ``tag``."""
    found = elements(data, check=check)
    if len(found) != 1 or found[0][0] != tag:
        raise AttestationError(f"expected one DER element with tag {tag:#04x}", check=check)
    return found[0][1]


def unsigned_integer(value: bytes, *, check: str) -> int:
    """A DER INTEGER's content octets as a non-negative int (SVNs are never negative)."""
    if not value or value[0] & 0x80 or len(value) > 9:
        raise AttestationError("expected a small non-negative DER INTEGER", check=check)
    return int.from_bytes(value, "big")


def oid_string(value: bytes, *, check: str) -> str:
    """An OBJECT IDENTIFIER's content octets in dotted form."""
    arcs: list[int] = []
    current = 0
    for i, byte in enumerate(value):
        if current == 0 and byte == 0x80:
            raise AttestationError("OID arc is not minimally encoded", check=check)
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(current)
            current = 0
        elif i == len(value) - 1:
            raise AttestationError("OID ends inside an arc", check=check)
    if not arcs:
        raise AttestationError("OID is empty", check=check)
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))
