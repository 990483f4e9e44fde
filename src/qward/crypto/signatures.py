"""Hybrid ML-DSA-65 + Ed25519 signatures.

Both algorithms sign the same domain-separated message and both must verify: the signature stays
unforgeable as long as either algorithm holds. ML-DSA gets the domain label as its FIPS 204 context
string; Ed25519, which has no context, gets it as a length-prefixed message prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from qward.crypto.keys import HybridVerifyKey
from qward.encoding import b64decode, b64encode
from qward.errors import FormatError, SignatureError
from qward.suites import MLDSA65_ED25519, require_suite

__all__ = ["HybridSignature", "ed25519_message", "verify_hybrid"]

_MLDSA65_SIGNATURE_LEN = 3309
_ED25519_SIGNATURE_LEN = 64


def ed25519_message(context: bytes, message: bytes) -> bytes:
    """The bytes Ed25519 signs: the context, length-prefixed, then the message."""
    return len(context).to_bytes(1, "big") + context + message


@dataclass(frozen=True, kw_only=True)
class HybridSignature:
    """A pair of signatures over one message, named by suite and signing key id."""

    key_id: str
    mldsa65: bytes
    ed25519: bytes
    suite: str = MLDSA65_ED25519

    def to_json(self) -> dict[str, str]:
        """Wire form."""
        return {
            "suite": self.suite,
            "key_id": self.key_id,
            "mldsa65": b64encode(self.mldsa65),
            "ed25519": b64encode(self.ed25519),
        }

    @classmethod
    def from_json(cls, doc: object) -> HybridSignature:
        """Parse the wire form."""
        if not isinstance(doc, dict) or set(doc) != {"suite", "key_id", "mldsa65", "ed25519"}:
            raise FormatError("signature: expected suite, key_id, mldsa65 and ed25519")
        require_suite(doc["suite"], expected=MLDSA65_ED25519, what="signature")
        if not isinstance(doc["key_id"], str):
            raise FormatError("signature: key_id must be a string")
        sig = cls(
            key_id=doc["key_id"],
            mldsa65=b64decode(doc["mldsa65"], what="signature mldsa65"),
            ed25519=b64decode(doc["ed25519"], what="signature ed25519"),
        )
        if len(sig.mldsa65) != _MLDSA65_SIGNATURE_LEN or len(sig.ed25519) != _ED25519_SIGNATURE_LEN:
            raise FormatError("signature: wrong signature lengths")
        return sig


def verify_hybrid(
    message: bytes, signature: HybridSignature, key: HybridVerifyKey, *, context: bytes
) -> None:
    """Verify both halves of ``signature`` over ``message``; raise ``SignatureError`` otherwise."""
    if signature.key_id != key.key_id:
        raise SignatureError(
            f"signature is by key {signature.key_id}, not the trusted key {key.key_id}"
        )
    mldsa_key, ed_key = key.components()
    try:
        mldsa_key.verify(signature.mldsa65, message, context)
    except InvalidSignature:
        raise SignatureError("ML-DSA-65 signature does not verify") from None
    try:
        ed_key.verify(signature.ed25519, ed25519_message(context, message))
    except InvalidSignature:
        raise SignatureError("Ed25519 signature does not verify") from None
