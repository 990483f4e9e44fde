"""A receipt's verification as a list of named checks, for people who want to see each step.

``Verifier.verify`` raises at the first failure, which is what programs want. An auditor looking at
a receipt (the audit console's drop zone) wants every step with its outcome: the same steps, in the
same order, with the same primitives; after the first failure the rest are reported as not run,
because a later step means nothing once an earlier one failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qward.crypto.signatures import verify_signature
from qward.errors import ProofError, QwardError, VerificationError
from qward.receipts.receipt import SIGNING_CONTEXT, ReceiptBundle
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import check_attestation
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.merkle import leaf_hash, verify_inclusion
from qward.tlog.note import open_note_by_any_set

__all__ = ["CHECK_NAMES", "ReceiptCheck", "receipt_checks"]

CHECK_NAMES = (
    "receipt format",
    "checkpoint signatures",
    "witness cosignatures",
    "log origin",
    "inclusion proof",
    "receipt signature",
    "attestation",
)


@dataclass(frozen=True, kw_only=True)
class ReceiptCheck:
    """One step: passed (True), failed (False) or not run (None), and what it found."""

    name: str
    ok: bool | None
    message: str


class _Steps:
    def __init__(self, data: bytes, trust: TrustBundle) -> None:
        self.data, self.trust = data, trust
        self.bundle: ReceiptBundle | None = None
        self.checkpoint: Checkpoint | None = None

    def parse(self) -> str:
        self.bundle = ReceiptBundle.from_bytes(self.data)
        return f"receipt {self.bundle.receipt_id}, {self.bundle.body['format']}"

    def signatures(self) -> str:
        assert self.bundle is not None
        text, _ = open_note_by_any_set(self.bundle.checkpoint, self.trust.log_key_sets)
        self.checkpoint = Checkpoint.from_body(text)
        return f"checkpoint of size {self.checkpoint.size} signed by every pinned log key"

    def witnesses(self) -> str:
        assert self.bundle is not None
        cosigners = self.trust.witness_policy.check(self.bundle.checkpoint)
        return ("cosigned by " + ", ".join(cosigners)) if cosigners else "no witnesses pinned"

    def origin(self) -> str:
        assert self.bundle is not None and self.checkpoint is not None
        if self.checkpoint.origin != self.trust.origin:
            raise VerificationError(f"checkpoint is from {self.checkpoint.origin!r}")
        if self.bundle.body["log"]["origin"] != self.checkpoint.origin:
            raise VerificationError("the receipt names a different log than its checkpoint")
        return self.checkpoint.origin

    def inclusion(self) -> str:
        assert self.bundle is not None and self.checkpoint is not None
        if self.bundle.index >= self.checkpoint.size:
            raise ProofError(f"entry index {self.bundle.index} is outside the checkpoint's tree")
        verify_inclusion(
            leaf_hash=leaf_hash(self.bundle.entry()),
            index=self.bundle.index,
            size=self.checkpoint.size,
            proof=self.bundle.inclusion_proof,
            root=self.checkpoint.root_hash,
        )
        return f"entry {self.bundle.index} is in the tree of {self.checkpoint.size}"

    def signature(self) -> str:
        assert self.bundle is not None
        signature = self.bundle.signature
        if signature is None:
            return "v2: authenticated by the checkpoint signatures above"
        key = self.trust.receipt_key(signature.key_id)
        verify_signature(self.bundle.signed_message(), signature, key, context=SIGNING_CONTEXT)
        return f"hybrid signature by receipt key {signature.key_id}"

    def attestation(self) -> str:
        assert self.bundle is not None
        check_attestation(self.bundle.body.get("attestation"), self.trust.attestation)
        record = self.bundle.body.get("attestation") or {}
        return f"core attestation status: {record.get('status', 'none recorded')}"


def receipt_checks(data: bytes, *, trust: TrustBundle) -> list[ReceiptCheck]:
    """Every step of ``Verifier.verify`` on ``data`` against ``trust``, with its outcome."""
    steps = _Steps(data, trust)
    order: tuple[Callable[[], str], ...] = (
        steps.parse,
        steps.signatures,
        steps.witnesses,
        steps.origin,
        steps.inclusion,
        steps.signature,
        steps.attestation,
    )
    results: list[ReceiptCheck] = []
    failed = False
    for name, step in zip(CHECK_NAMES, order, strict=True):
        if failed:
            results.append(ReceiptCheck(name=name, ok=None, message="not run"))
            continue
        try:
            results.append(ReceiptCheck(name=name, ok=True, message=step()))
        except QwardError as exc:
            failed = True
            results.append(ReceiptCheck(name=name, ok=False, message=str(exc)))
    return results
