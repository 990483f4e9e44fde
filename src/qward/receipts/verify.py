"""Offline receipt verification: no network, no core, only the pinned trust bundle."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from qward.crypto.signatures import verify_signature
from qward.errors import ProofError, VerificationError
from qward.receipts.receipt import SIGNING_CONTEXT, ReceiptBundle
from qward.receipts.trust import TrustBundle
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.merkle import leaf_hash, verify_inclusion
from qward.tlog.note import open_note_by_any_set
from qward.tlog.witness_policy import WitnessPolicy

__all__ = ["VerifiedReceipt", "Verifier", "check_attestation"]

_OPENED_NOTES = 64


@dataclass(frozen=True, kw_only=True)
class VerifiedReceipt:
    """A receipt whose signature, inclusion proof and checkpoint all verified."""

    bundle: ReceiptBundle
    checkpoint: Checkpoint

    @property
    def body(self) -> dict[str, Any]:
        """The verified receipt body."""
        return self.bundle.body


class Verifier:
    """Verifies receipt bundles against a pinned ``TrustBundle``."""

    def __init__(self, *, trust: TrustBundle, witness_policy: WitnessPolicy | None = None) -> None:
        self._trust = trust
        self._witnesses = trust.witness_policy if witness_policy is None else witness_policy
        # Checkpoint notes that passed steps 3 and 4 under this verifier's pins, by their bytes.
        self._opened: dict[bytes, Checkpoint] = {}

    def verify(self, data: bytes) -> VerifiedReceipt:
        """Verify a receipt file's bytes; raise a ``VerificationError`` or ``FormatError``.

        1. Parse strictly (canonical JSON, known format, every field typed).
        2. A v1 receipt: verify its hybrid signature under the pinned receipt key it names. (A v2
           receipt has none: steps 3 and 5 are what authenticate it.)
        3. Open the checkpoint note: every key of one pinned log key version must have signed it
           (every pinned key, unless the log rotated its keys), and the witness
           policy (the trust bundle's, unless one is given) must be met by its cosignatures.
        4. Check the checkpoint's origin against the pin and the body's ``log.origin``.
        5. Verify the RFC 9162 inclusion proof of the entry under the checkpoint's root.
        6. If the trust bundle was pinned after an affirming appraisal, the receipt's own
           attestation record must be affirming too, for the same evidence format and the same
           measurements: the run happened on the core the client appraised.
        """
        bundle = ReceiptBundle.from_bytes(data)
        checkpoint = self._checkpoint(bundle)
        if bundle.signature is not None:
            key = self._trust.receipt_key(bundle.signature.key_id)
            verify_signature(
                bundle.signed_message(), bundle.signature, key, context=SIGNING_CONTEXT
            )
        if bundle.body["log"]["origin"] != checkpoint.origin:
            raise VerificationError("receipt names a different log than its checkpoint")
        if bundle.index >= checkpoint.size:
            raise ProofError(f"entry index {bundle.index} is outside the checkpoint's tree")
        verify_inclusion(
            leaf_hash=leaf_hash(bundle.entry()),
            index=bundle.index,
            size=checkpoint.size,
            proof=bundle.inclusion_proof,
            root=checkpoint.root_hash,
        )
        check_attestation(bundle.body.get("attestation"), self._trust.attestation)
        return VerifiedReceipt(bundle=bundle, checkpoint=checkpoint)

    def _checkpoint(self, bundle: ReceiptBundle) -> Checkpoint:
        """Steps 3 and 4, once per distinct note: receipts of one batch share their checkpoint."""
        cached = self._opened.get(bundle.checkpoint)
        if cached is not None:
            return cached
        text, _ = open_note_by_any_set(bundle.checkpoint, self._trust.log_key_sets)
        self._witnesses.check(bundle.checkpoint)
        checkpoint = Checkpoint.from_body(text)
        if checkpoint.origin != self._trust.origin:
            raise VerificationError(
                f"checkpoint is from log {checkpoint.origin!r}, "
                f"not the pinned {self._trust.origin!r}"
            )
        if len(self._opened) >= _OPENED_NOTES:
            self._opened.clear()
        self._opened[bundle.checkpoint] = checkpoint
        return checkpoint

    @staticmethod
    def check_model(verified: VerifiedReceipt, model: bytes) -> None:
        """Check that ``model`` (plaintext ONNX bytes) is the model the receipt names."""
        digest = hashlib.sha256(model).hexdigest()
        if digest != verified.body["model"]["sha256"]:
            raise VerificationError(
                f"model digest {digest} differs from the receipt's "
                f"{verified.body['model']['sha256']}"
            )


def check_attestation(record: object, appraised: dict[str, Any] | None) -> None:
    """Step 6: a receipt from an appraised core names the same measured platform."""
    if not appraised or appraised.get("status") != "affirming":
        return
    if not isinstance(record, dict) or record.get("status") != "affirming":
        raise VerificationError(
            "the trust bundle was pinned after hardware attestation, but the receipt's core "
            "reports no affirming attestation"
        )
    for key in ("evidence_format", "measurements"):
        if record.get(key) != appraised.get(key):
            raise VerificationError(
                f"the receipt's attestation {key} differs from the core the client appraised"
            )
