"""The core's check of a model's OpenSSF model-signing signature at registration.

The core verifies the plaintext it is about to register (not the client's word) against its own
signer policy, ``<state>/model-signers.json`` (``qward.provenance.signer_policy``). The verified
record (method, identity, signature digest) goes into the registration entry and every receipt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qward.provenance.model_signature import ModelSignature
from qward.provenance.signer_policy import SignerPolicy

__all__ = ["registration_signature", "signature_member"]


def registration_signature(
    plaintext: bytes, header: bytes, state_dir: Path
) -> dict[str, str] | None:
    """The verified signature record of a model being registered, ``None`` if it is unsigned
    and the policy allows that; a ``QwardError`` (fail closed) otherwise."""
    policy = SignerPolicy.load(state_dir)
    record = policy.check(plaintext, ModelSignature.from_sealed_header(header))
    return None if record is None else record.to_json()


def signature_member(signature: dict[str, str] | None) -> dict[str, Any]:
    """The optional ``model_signature`` member of a receipt body (absent for unsigned models,
    so receipts of unsigned models are byte-for-byte what they were)."""
    return {} if signature is None else {"model_signature": dict(signature)}
