"""Audit tools over the transparency log: who ran which model on which input digest, when; and
evidence bundles that verify offline on another machine.

An evidence bundle holds the selected log entries (signed receipts among them), an inclusion proof
for each against one signed checkpoint, and the operator's public keys for convenience. Verifying
it needs only the bundle and a trust bundle pinned out of band: the keys inside the bundle are
compared with the pinned ones, never trusted on their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qward.crypto.signatures import HybridSignature, verify_hybrid
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, VerificationError
from qward.receipts.entries import RECEIPT_ENTRY
from qward.receipts.receipt import SIGNING_CONTEXT, check_body
from qward.receipts.trust import TrustBundle
from qward.tlog.backend import LogBackend
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.merkle import leaf_hash, verify_inclusion
from qward.tlog.note import open_note

__all__ = [
    "EVIDENCE_FORMAT",
    "EvidenceReport",
    "RunRecord",
    "export_evidence",
    "query_runs",
    "verify_evidence",
]

EVIDENCE_FORMAT = "qward/evidence/v1"
_MAX_EVIDENCE = 256 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One attested run as the log records it."""

    index: int
    issued_at: str
    caller: str | None
    model_name: str
    model_sha256: str
    input_sha256: str
    output_sha256: str
    receipt_id: str


def _runs(store: LogBackend) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    for index, entry, _ in store.entries_with_leaf_hashes():
        if b'"type":"qward/receipt/v1"' not in entry:
            continue
        doc = json.loads(entry)
        if doc.get("type") == RECEIPT_ENTRY:
            yield index, entry, doc


def query_runs(
    store: LogBackend,
    *,
    model: str | None = None,
    caller: str | None = None,
    since: str | None = None,
) -> list[RunRecord]:
    """Runs in log order, filtered by model name or digest, caller token id, and ISO time."""
    records = []
    for index, _, doc in _runs(store):
        body = doc["body"]
        record = RunRecord(
            index=index,
            issued_at=body["issued_at"],
            caller=body["parameters"].get("qward_caller"),
            model_name=body["model"]["name"],
            model_sha256=body["model"]["sha256"],
            input_sha256=body["input"]["sha256"],
            output_sha256=body["output"]["sha256"],
            receipt_id=body["receipt_id"],
        )
        if model is not None and model not in (record.model_name, record.model_sha256):
            continue
        if caller is not None and record.caller != caller:
            continue
        if since is not None and record.issued_at < since:
            continue
        records.append(record)
    return records


def export_evidence(store: LogBackend, trust: TrustBundle, indices: list[int]) -> bytes:
    """An evidence bundle for the entries at ``indices``, proved against the latest checkpoint."""
    note = store.latest_checkpoint()
    if note is None:
        raise VerificationError("the log has no published checkpoint yet")
    size = Checkpoint.from_body(note[: note.rfind(b"\n\n") + 1]).size
    items = [
        {
            "index": i,
            "entry": b64encode(store.entry(i)),
            "inclusion_proof": [b64encode(h) for h in store.inclusion_proof(i, size)],
        }
        for i in sorted(set(indices))
        if i < size
    ]
    return canonical_json(
        {
            "format": EVIDENCE_FORMAT,
            "checkpoint": note.decode("utf-8"),
            "trust": json.loads(trust.to_bytes()),
            "items": items,
        }
    )


@dataclass(frozen=True, kw_only=True)
class EvidenceReport:
    """What an evidence bundle proved."""

    checkpoint: Checkpoint
    entries: int
    receipts: int


def verify_evidence(data: bytes, *, trust: TrustBundle) -> EvidenceReport:
    """Verify a bundle offline against a pinned ``trust``; raises on the first problem.

    1. The bundle's keys must equal the pinned ones.
    2. The checkpoint must carry every pinned log signature and the pinned origin.
    3. Each entry must be included in the checkpoint's tree at its index.
    4. Each receipt entry's hybrid signature must verify under a pinned receipt key.
    """
    if len(data) > _MAX_EVIDENCE:
        raise FormatError("evidence bundle is over the size limit")
    doc = parse_canonical_json(data, what="evidence bundle")
    if doc.get("format") != EVIDENCE_FORMAT or not isinstance(doc.get("items"), list):
        raise FormatError("not a qward evidence bundle")
    if canonical_json(doc.get("trust")) != trust.to_bytes():
        raise VerificationError("the bundle's public keys differ from the pinned trust bundle")
    text, _ = open_note(str(doc.get("checkpoint")).encode("utf-8"), trust.log_verifiers)
    checkpoint = Checkpoint.from_body(text)
    if checkpoint.origin != trust.origin:
        raise VerificationError(f"checkpoint is from {checkpoint.origin!r}, not the pinned log")
    receipts = 0
    for item in doc["items"]:
        index, entry = item.get("index"), b64decode(item.get("entry"), what="evidence entry")
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < checkpoint.size
        ):
            raise FormatError("evidence item index is outside the checkpoint's tree")
        proof = tuple(b64decode(h, what="evidence proof") for h in item.get("inclusion_proof", []))
        verify_inclusion(
            leaf_hash=leaf_hash(entry),
            index=index,
            size=checkpoint.size,
            proof=proof,
            root=checkpoint.root_hash,
        )
        parsed = parse_canonical_json(entry, what=f"log entry {index}")
        if parsed.get("type") == RECEIPT_ENTRY:
            check_body(parsed["body"])
            signature = HybridSignature.from_json(parsed["signature"])
            verify_hybrid(
                canonical_json(parsed["body"]),
                signature,
                trust.receipt_key(signature.key_id),
                context=SIGNING_CONTEXT,
            )
            receipts += 1
    return EvidenceReport(checkpoint=checkpoint, entries=len(doc["items"]), receipts=receipts)
