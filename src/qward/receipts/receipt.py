"""Receipt bodies and receipt bundles.

The body says what ran: model, input and output digests, seed and parameters, the runtime profile,
the isolation actually in force, and which keys were used. The body is itself the log entry, so a
bundle is: body, the entry's index, an inclusion proof and the signed checkpoint it is proved
against. The bundle file is canonical JSON; a parser rejects any other byte sequence.

Two versions, both verified today:

* ``v1`` (``per-receipt`` signing): the body also carries its own hybrid ML-DSA-65 + Ed25519
  signature under the core's receipt key. Two keys must be forged to forge a receipt, and each
  receipt costs one more signature.
* ``v2`` (``checkpoint`` signing, the default): no signature of its own. The checkpoint that the
  inclusion proof leads to is signed by the log's hybrid Ed25519 + ML-DSA-44 keys (and cosigned by
  the pinned witnesses), and that signature covers every entry in the tree: one signature serves
  every receipt of a batch, as in Certificate Transparency's and Rekor v2's designs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from qward.crypto.signatures import ReceiptSignature
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError
from qward.receipts.circuit import check_circuit_record
from qward.receipts.entries import receipt_entry

__all__ = [
    "BUNDLE_FORMAT",
    "CHECKPOINT_BUNDLE_FORMAT",
    "CHECKPOINT_RECEIPT_FORMAT",
    "CHECKPOINT_SIGNER",
    "MAX_RECEIPT_BYTES",
    "RECEIPT_FORMAT",
    "RECEIPT_SIGNATURES_ENV",
    "SIGNING_CONTEXT",
    "ReceiptBundle",
    "ReceiptSigning",
    "check_body",
]


class ReceiptSigning(StrEnum):
    """What authenticates a receipt (the core's ``--receipt-signatures`` setting)."""

    #: v2: the hybrid-signed, witness-cosigned checkpoint its inclusion proof leads to.
    CHECKPOINT = "checkpoint"
    #: v1: additionally its own ML-DSA-65 + Ed25519 signature under the receipt key.
    PER_RECEIPT = "per-receipt"


RECEIPT_FORMAT = "qward/receipt/v1"
BUNDLE_FORMAT = "qward/receipt-bundle/v1"
CHECKPOINT_RECEIPT_FORMAT = "qward/receipt/v2"
CHECKPOINT_BUNDLE_FORMAT = "qward/receipt-bundle/v2"
#: The environment variable the core reads its receipt signing setting from.
RECEIPT_SIGNATURES_ENV = "QWARD_RECEIPT_SIGNATURES"
#: The ``signer`` member of a v2 body: the log's checkpoint signature vouches for it.
CHECKPOINT_SIGNER = {"kind": "checkpoint"}
SIGNING_CONTEXT = b"qward/receipt/v1"
MAX_RECEIPT_BYTES = 1024 * 1024

_BODY_FIELDS = {
    "format": str,
    "receipt_id": str,
    "issued_at": str,
    "model": dict,
    "input": dict,
    "output": dict,
    "parameters": dict,
    "seed": int,
    "runtime": dict,
    "isolation": dict,
    "key_uses": list,
    "log": dict,
    "signer": dict,
}
# Receipts from before attestation have no ``attestation`` member; newer ones always do.
# Receipts of models without an OpenSSF model-signing signature have no ``model_signature``.
_OPTIONAL_FIELDS = {"attestation": dict, "model_signature": dict}
_SIGNATURE_FIELDS = {"method", "identity", "signature_sha256"}


def _require_digest(section: dict[str, Any], key: str, where: str) -> None:
    value = section.get(key)
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise FormatError(f"receipt body: {where}.{key} must be a lower-case SHA-256 hex digest")


def check_body(body: dict[str, Any]) -> None:
    """Check that a receipt body has every field with the right type."""
    missing = sorted(set(_BODY_FIELDS) - set(body))
    if missing:
        raise FormatError(f"receipt body: missing {', '.join(missing)}")
    extra = sorted(set(body) - set(_BODY_FIELDS) - set(_OPTIONAL_FIELDS))
    if extra:
        raise FormatError(f"receipt body: unexpected {', '.join(extra)}")
    for key, kind in (_BODY_FIELDS | _OPTIONAL_FIELDS).items():
        if key in body and (not isinstance(body[key], kind) or isinstance(body[key], bool)):
            raise FormatError(f"receipt body: {key} must be a {kind.__name__}")
    if body["format"] not in (RECEIPT_FORMAT, CHECKPOINT_RECEIPT_FORMAT):
        raise FormatError(f"receipt body: unsupported format {body['format']!r}")
    if (body["format"] == CHECKPOINT_RECEIPT_FORMAT) != (body["signer"] == CHECKPOINT_SIGNER):
        raise FormatError("receipt body: a v2 receipt, and only a v2 receipt, is checkpoint-signed")
    for section in ("model", "output"):
        _require_digest(body[section], "sha256", section)
    # The input is named by a plain digest or, when the client salted it, only by a commitment.
    kinds = sorted(body["input"])
    if kinds not in (["sha256"], ["hmac_sha256"]):
        raise FormatError("receipt body: input must hold exactly one of sha256 or hmac_sha256")
    _require_digest(body["input"], kinds[0], "input")
    if "model_signature" in body:
        _check_model_signature(body["model_signature"])
    if not isinstance(body["log"].get("origin"), str):
        raise FormatError("receipt body: log.origin must be a string")
    if "circuit" in body["runtime"]:
        check_circuit_record(body["runtime"]["circuit"], seed=body["seed"])


def _check_model_signature(section: dict[str, Any]) -> None:
    if set(section) != _SIGNATURE_FIELDS:
        raise FormatError(f"receipt body: model_signature has exactly {sorted(_SIGNATURE_FIELDS)}")
    if section["method"] not in ("key", "certificate") or not isinstance(section["identity"], str):
        raise FormatError("receipt body: model_signature method or identity is invalid")
    _require_digest(section, "signature_sha256", "model_signature")


@dataclass(frozen=True, kw_only=True)
class ReceiptBundle:
    """Everything needed to verify a receipt offline."""

    body: dict[str, Any]
    #: ``None`` for a v2 (checkpoint-signed) receipt.
    signature: ReceiptSignature | None
    index: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes

    @property
    def receipt_id(self) -> str:
        """The receipt's id."""
        return str(self.body["receipt_id"])

    def entry(self) -> bytes:
        """The exact log entry bytes this receipt was logged as."""
        return receipt_entry(self.body, self.signature)

    def signed_message(self) -> bytes:
        """The bytes the signature covers."""
        return canonical_json(self.body)

    def to_bytes(self) -> bytes:
        """Canonical JSON encoding of the bundle."""
        log = {
            "index": self.index,
            "inclusion_proof": [b64encode(h) for h in self.inclusion_proof],
            "checkpoint": self.checkpoint.decode("utf-8"),
        }
        if self.signature is None:
            return canonical_json(
                {"format": CHECKPOINT_BUNDLE_FORMAT, "body": self.body, "log": log}
            )
        return canonical_json(
            {
                "format": BUNDLE_FORMAT,
                "body": self.body,
                "signature": self.signature.to_json(),
                "log": log,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReceiptBundle:
        """Strictly parse a bundle; any byte that is out of place is a ``FormatError``."""
        if len(data) > MAX_RECEIPT_BYTES:
            raise FormatError(f"receipt is {len(data)} bytes, over the {MAX_RECEIPT_BYTES} limit")
        doc = parse_canonical_json(data, what="receipt")
        signed = doc.get("format") == BUNDLE_FORMAT
        if not signed and doc.get("format") != CHECKPOINT_BUNDLE_FORMAT:
            raise FormatError(f"receipt: unsupported format {doc.get('format')!r}")
        members = {"format", "body", "signature", "log"} if signed else {"format", "body", "log"}
        if set(doc) != members:
            raise FormatError(f"receipt: expected exactly {', '.join(sorted(members))}")
        body, log = doc["body"], doc["log"]
        if not isinstance(body, dict) or not isinstance(log, dict):
            raise FormatError("receipt: body and log must be objects")
        check_body(body)
        if (body["format"] == RECEIPT_FORMAT) != signed:
            raise FormatError("receipt: the body's format does not match the bundle's")
        index, proof, checkpoint = (
            log.get("index"),
            log.get("inclusion_proof"),
            log.get("checkpoint"),
        )
        if set(log) != {"index", "inclusion_proof", "checkpoint"}:
            raise FormatError("receipt: log must hold index, inclusion_proof and checkpoint")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise FormatError("receipt: log.index must be a non-negative integer")
        if not isinstance(proof, list) or len(proof) > 64 or not isinstance(checkpoint, str):
            raise FormatError("receipt: log.inclusion_proof or log.checkpoint is malformed")
        hashes = tuple(b64decode(h, what="receipt inclusion proof") for h in proof)
        if any(len(h) != 32 for h in hashes):
            raise FormatError("receipt: inclusion proof hashes must be 32 bytes")
        return cls(
            body=body,
            signature=ReceiptSignature.from_json(doc["signature"]) if signed else None,
            index=index,
            inclusion_proof=hashes,
            checkpoint=checkpoint.encode("utf-8"),
        )
