"""The one anchoring interface: ``Anchor``, its ``AnchorProof`` and the ``AnchoredTime`` it proves.

Every anchor commits to the same digest of a signed checkpoint note,
``SHA-256("qward/anchor/v1\\n" || note)``, over the whole note, signatures included, so the anchor
also fixes which keys had signed by then. The label keeps an anchor digest from ever equalling
another SHA-256 that qward computes. Because it is a plain SHA-256 of the label and the note, the
same digest is what an OpenTimestamps client would compute for a file holding those bytes.

An ``AnchorProof`` travels as canonical JSON (``qward.encoding``)::

    {"data": {...}, "digest": "<base64 32 bytes>", "format": "qward/anchor-proof/v1",
     "kind": "ethereum"}

``data`` is a flat object of kind-specific fields, strings and integers only, which each plug-in
checks strictly when it verifies. Verification raises (``VerificationError`` or ``ProofError`` for
evidence that does not check out, ``FormatError`` for a proof that does not parse); it never
returns a bool.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, InputError, ProofError, VerificationError
from qward.tlog.note import MAX_NOTE_BYTES

__all__ = [
    "ANCHOR_LABEL",
    "DIGEST_SIZE",
    "MAX_PROOF_BYTES",
    "PROOF_FORMAT",
    "Anchor",
    "AnchorProof",
    "AnchorStatus",
    "AnchoredTime",
    "anchor_digest",
    "check_proof_subject",
    "verify_anchor",
]

#: Domain-separation label prefixed to the note before hashing.
ANCHOR_LABEL = b"qward/anchor/v1\n"
#: The format marker every serialised proof starts with.
PROOF_FORMAT = "qward/anchor-proof/v1"
DIGEST_SIZE = 32
#: Far above any real proof (an OpenTimestamps proof is a few kB); it bounds hostile input.
MAX_PROOF_BYTES = 256 * 1024

_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
_DATA_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PROOF_KEYS = frozenset({"data", "digest", "format", "kind"})

DataValue = str | int


def anchor_digest(note: bytes) -> bytes:
    """``SHA-256(ANCHOR_LABEL || note)``: the 32 bytes every anchor commits to."""
    if not isinstance(note, bytes) or not note:
        raise InputError("anchor: the signed note must be non-empty bytes")
    if len(note) > MAX_NOTE_BYTES:
        raise FormatError("anchor: the signed note is over the size limit")
    return hashlib.sha256(ANCHOR_LABEL + note).digest()


class AnchorStatus(StrEnum):
    """Whether a ledger has confirmed the anchor, or it is only promised (OpenTimestamps)."""

    CONFIRMED = "confirmed"
    PENDING = "pending"


@dataclass(frozen=True, kw_only=True)
class AnchoredTime:
    """What a verified anchor proves: the note existed no later than ``time``.

    ``time`` is the ledger's own clock (POSIX seconds) for a confirmed anchor and ``None`` for a
    pending one, which proves nothing about time yet. ``evidence`` names where it was found.
    """

    kind: str
    digest: bytes
    status: AnchorStatus
    time: int | None
    evidence: str

    def __post_init__(self) -> None:
        confirmed = self.status is AnchorStatus.CONFIRMED
        if confirmed != (self.time is not None):
            raise InputError("anchored time: a time is given exactly when the anchor is confirmed")
        if self.time is not None and (isinstance(self.time, bool) or self.time < 0):
            raise InputError("anchored time: time must be a non-negative integer")


def _check_data(data: Mapping[str, DataValue]) -> dict[str, DataValue]:
    if not isinstance(data, Mapping):
        raise FormatError("anchor proof: data must be an object")
    out: dict[str, DataValue] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not _DATA_KEY.fullmatch(key):
            raise FormatError(f"anchor proof: data key {key!r} is not a lower-case identifier")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise FormatError(f"anchor proof: data.{key} must be a string or an integer")
        out[key] = value
    canonical_json(out)  # rejects integers outside the interoperable range, naming the field
    return out


@dataclass(frozen=True, kw_only=True)
class AnchorProof:
    """Evidence that one ledger recorded ``digest``; ``data`` is specific to ``kind``."""

    kind: str
    digest: bytes
    data: Mapping[str, DataValue] = field(hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND.fullmatch(self.kind):
            raise FormatError(f"anchor proof: kind {self.kind!r} is not a lower-case name")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise FormatError(f"anchor proof: digest must be {DIGEST_SIZE} bytes")
        # A read-only copy: the proof stays what was verified even if the caller's dict changes.
        object.__setattr__(self, "data", MappingProxyType(_check_data(self.data)))

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the proof."""
        return canonical_json(
            {
                "data": dict(self.data),
                "digest": b64encode(self.digest),
                "format": PROOF_FORMAT,
                "kind": self.kind,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> AnchorProof:
        """Strictly parse the bytes ``to_json`` makes; ``FormatError`` names the bad field."""
        if not isinstance(raw, bytes) or len(raw) > MAX_PROOF_BYTES:
            raise FormatError("anchor proof: expected bytes under the size limit")
        obj = parse_canonical_json(raw, what="anchor proof")
        if set(obj) != _PROOF_KEYS:
            missing, extra = sorted(_PROOF_KEYS - set(obj)), sorted(set(obj) - _PROOF_KEYS)
            raise FormatError(f"anchor proof: missing fields {missing}, unknown fields {extra}")
        if obj["format"] != PROOF_FORMAT:
            raise FormatError(f"anchor proof: format is not {PROOF_FORMAT!r}")
        if not isinstance(obj["data"], dict):
            raise FormatError("anchor proof: data must be an object")
        digest = b64decode(obj["digest"], what="anchor proof: digest")
        return cls(kind=obj["kind"], digest=digest, data=obj["data"])

    def text(self, key: str) -> str:
        """The string field ``data[key]``, or ``FormatError`` naming it."""
        value = self.data.get(key)
        if not isinstance(value, str):
            raise FormatError(f"anchor proof: data.{key} is missing or not a string")
        return value

    def integer(self, key: str) -> int:
        """The non-negative integer field ``data[key]``, or ``FormatError`` naming it."""
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FormatError(f"anchor proof: data.{key} is missing or not a non-negative integer")
        return value

    def expect_keys(self, keys: frozenset[str]) -> None:
        """Require ``data`` to hold exactly ``keys``; anything else is a ``FormatError``."""
        if set(self.data) != keys:
            missing, extra = sorted(keys - set(self.data)), sorted(set(self.data) - keys)
            raise FormatError(
                f"anchor proof: data is missing fields {missing}, has unknown fields {extra}"
            )


def check_proof_subject(note: bytes, proof: AnchorProof, *, kind: str) -> bytes:
    """Check ``proof`` is of ``kind`` and anchors exactly ``note``; return the digest."""
    if proof.kind != kind:
        raise ProofError(f"anchor proof is of kind {proof.kind!r}, not {kind!r}")
    digest = anchor_digest(note)
    if not hmac.compare_digest(digest, proof.digest):
        raise ProofError(f"{kind} anchor proof is for a different note (digest mismatch)")
    return digest


class Anchor(Protocol):
    """A ledger that can record an anchor digest and later prove when it did."""

    @property
    def name(self) -> str:
        """The proof kind this anchor writes and verifies, e.g. ``"ethereum"``."""
        ...

    def anchor(self, note: bytes) -> AnchorProof:
        """Record ``anchor_digest(note)`` in the ledger and return the proof."""
        ...

    def verify(self, note: bytes, proof: AnchorProof) -> AnchoredTime:
        """Check ``proof`` anchors ``note``; raise ``VerificationError`` if anything mismatches."""
        ...


def verify_anchor(note: bytes, proof: AnchorProof, *, anchors: Sequence[Anchor]) -> AnchoredTime:
    """Verify ``proof`` with the one configured anchor whose name is the proof's kind."""
    matching = [a for a in anchors if a.name == proof.kind]
    if len(matching) > 1:
        raise InputError(f"two configured anchors are named {proof.kind!r}")
    if not matching:
        raise VerificationError(f"no configured anchor verifies proofs of kind {proof.kind!r}")
    return matching[0].verify(note, proof)
