"""Replay verdicts as evidence: a logged entry saying that a receipt's output was reproduced.

A core that replays a receipt logs a ``qward/replay-verdict/v1`` entry under a (witness-cosigned)
checkpoint of its own log, and hands back a *verdict document*: the entry, its index, an RFC 9162
inclusion proof and the signed checkpoint. Anyone holding the replaying log's pinned trust bundle
can check the document offline, and match it to the receipt it names by the receipt's log origin,
index and body digest.

A replay is *independent* when the log that recorded the verdict is not the log that issued the
receipt: another core, with its own keys and its own log, run by whoever wants to check. A replay
by the issuing core itself is still evidence (the same model reproduces the same output), but it
is the operator checking its own work.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, ProofError, VerificationError
from qward.receipts.entries import REPLAY_VERDICT_ENTRY
from qward.receipts.receipt import ReceiptBundle
from qward.receipts.replay_verdict import BITWISE, MISMATCH, WITHIN_TOLERANCE
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import Verifier
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.merkle import leaf_hash, verify_inclusion
from qward.tlog.note import open_note_by_any_set

__all__ = [
    "VERDICT_DOCUMENT_FORMAT",
    "ReplayVerdictDocument",
    "VerifiedVerdict",
    "check_verdict_entry",
    "receipt_reference",
    "verify_replay_verdict",
]

VERDICT_DOCUMENT_FORMAT = "qward/replay-verdict-document/v1"
_MAX_DOCUMENT = 1024 * 1024
_VERDICTS = (BITWISE, WITHIN_TOLERANCE, MISMATCH)
_ENTRY_FIELDS: dict[str, type] = {
    "type": str,
    "receipt": dict,
    "original": dict,
    "replay": dict,
    "verdict": str,
    "same_environment": bool,
    "independent": bool,
    "max_abs": str,
    "max_rel": str,
    "detail": str,
    "request_id": str,
    "at": str,
}
_REFERENCE_FIELDS: dict[str, type] = {
    "receipt_id": str,
    "log_origin": str,
    "index": int,
    "body_sha256": str,
}


def receipt_reference(bundle: ReceiptBundle) -> dict[str, Any]:
    """How a verdict names its receipt, across logs: issuing log, index and body digest."""
    return {
        "receipt_id": bundle.receipt_id,
        "log_origin": str(bundle.body["log"]["origin"]),
        "index": bundle.index,
        "body_sha256": hashlib.sha256(canonical_json(bundle.body)).hexdigest(),
    }


def _typed(doc: dict[str, Any], fields: dict[str, type], where: str) -> None:
    if set(doc) != set(fields):
        raise FormatError(f"{where}: expected exactly {', '.join(sorted(fields))}")
    for key, kind in fields.items():
        value = doc[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise FormatError(f"{where}: {key} must be a {kind.__name__}")


def check_verdict_entry(entry: dict[str, Any]) -> None:
    """Check that a parsed log entry is a well-formed ``qward/replay-verdict/v1`` entry."""
    _typed(entry, _ENTRY_FIELDS, "replay verdict")
    if entry["type"] != REPLAY_VERDICT_ENTRY:
        raise FormatError(f"replay verdict: type must be {REPLAY_VERDICT_ENTRY!r}")
    _typed(entry["receipt"], _REFERENCE_FIELDS, "replay verdict receipt")
    if entry["verdict"] not in _VERDICTS:
        raise FormatError(f"replay verdict: unknown verdict {entry['verdict']!r}")
    if not isinstance(entry["replay"].get("log_origin"), str):
        raise FormatError("replay verdict: replay.log_origin must be a string")
    independent = entry["replay"]["log_origin"] != entry["receipt"]["log_origin"]
    if entry["independent"] != independent:
        raise FormatError("replay verdict: independent disagrees with the two log origins")


@dataclass(frozen=True, kw_only=True)
class ReplayVerdictDocument:
    """A verdict entry with what proves it is in the replaying core's log."""

    entry: bytes
    index: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes

    def to_bytes(self) -> bytes:
        """Canonical JSON encoding of the document."""
        return canonical_json(
            {
                "format": VERDICT_DOCUMENT_FORMAT,
                "entry": b64encode(self.entry),
                "index": self.index,
                "inclusion_proof": [b64encode(h) for h in self.inclusion_proof],
                "checkpoint": self.checkpoint.decode("utf-8"),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReplayVerdictDocument:
        """Strictly parse a document; anything out of place is a ``FormatError``."""
        if len(data) > _MAX_DOCUMENT:
            raise FormatError(f"replay verdict document is over the {_MAX_DOCUMENT}-byte limit")
        doc = parse_canonical_json(data, what="replay verdict document")
        if doc.get("format") != VERDICT_DOCUMENT_FORMAT:
            raise FormatError(f"not a replay verdict document (format {doc.get('format')!r})")
        if set(doc) != {"format", "entry", "index", "inclusion_proof", "checkpoint"}:
            raise FormatError("replay verdict document: unexpected or missing members")
        index, proof, note = doc["index"], doc["inclusion_proof"], doc["checkpoint"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise FormatError("replay verdict document: index must be a non-negative integer")
        if not isinstance(proof, list) or len(proof) > 64 or not isinstance(note, str):
            raise FormatError("replay verdict document: inclusion_proof or checkpoint malformed")
        hashes = tuple(b64decode(h, what="replay verdict inclusion proof") for h in proof)
        if any(len(h) != 32 for h in hashes):
            raise FormatError("replay verdict document: proof hashes must be 32 bytes")
        return cls(
            entry=b64decode(doc["entry"], what="replay verdict entry"),
            index=index,
            inclusion_proof=hashes,
            checkpoint=note.encode("utf-8"),
        )


@dataclass(frozen=True, kw_only=True)
class VerifiedVerdict:
    """A verdict document whose checkpoint and inclusion proof verified."""

    entry: dict[str, Any]
    index: int
    checkpoint: Checkpoint

    @property
    def verdict(self) -> str:
        """bitwise-identical, within-tolerance or mismatch."""
        return str(self.entry["verdict"])

    @property
    def independent(self) -> bool:
        """Whether another log than the receipt's recorded the verdict."""
        return bool(self.entry["independent"])


def verify_replay_verdict(
    data: bytes,
    *,
    trust: TrustBundle,
    receipt: bytes | None = None,
    receipt_trust: TrustBundle | None = None,
) -> VerifiedVerdict:
    """Verify a verdict document offline against the replaying log's pinned ``trust``.

    1. Parse the document and its entry strictly.
    2. Open the checkpoint note with the pinned log keys and the pinned witness quorum; its
       origin must be the pinned one and the entry's ``replay.log_origin``.
    3. Verify the entry's RFC 9162 inclusion proof under the checkpoint's root.
    4. Given the ``receipt``, verify it (against ``receipt_trust``, the issuing log's pins; by
       default ``trust``) and check that the verdict names exactly this receipt.
    """
    document = ReplayVerdictDocument.from_bytes(data)
    entry = parse_canonical_json(document.entry, what="replay verdict entry")
    check_verdict_entry(entry)
    text, _ = open_note_by_any_set(document.checkpoint, trust.log_key_sets)
    trust.witness_policy.check(document.checkpoint)
    checkpoint = Checkpoint.from_body(text)
    if checkpoint.origin != trust.origin:
        raise VerificationError(
            f"verdict checkpoint is from log {checkpoint.origin!r}, not the pinned {trust.origin!r}"
        )
    if entry["replay"]["log_origin"] != checkpoint.origin:
        raise VerificationError("the verdict names a different replaying log than its checkpoint")
    if document.index >= checkpoint.size:
        raise ProofError(f"verdict index {document.index} is outside the checkpoint's tree")
    verify_inclusion(
        leaf_hash=leaf_hash(document.entry),
        index=document.index,
        size=checkpoint.size,
        proof=document.inclusion_proof,
        root=checkpoint.root_hash,
    )
    if receipt is not None:
        verified = Verifier(trust=receipt_trust or trust).verify(receipt)
        if entry["receipt"] != receipt_reference(verified.bundle):
            raise VerificationError("the verdict is about a different receipt")
    return VerifiedVerdict(entry=entry, index=document.index, checkpoint=checkpoint)
