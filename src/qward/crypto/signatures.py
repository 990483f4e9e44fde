"""Receipt signatures under a named suite; the hybrid ML-DSA-65 + Ed25519 suite is the default.

Every component of a suite signs the same domain-separated message and every one must verify: a
hybrid signature stays unforgeable as long as either algorithm holds. ML-DSA gets the domain label
as its FIPS 204 context string; Ed25519, which has no context, gets it as a length-prefixed message
prefix. The wire form names the suite and key id, then one base64 field per component
(``mldsa65``, ``mldsa87``, ``ed25519``), so the hybrid form is unchanged from earlier receipts.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from qward.crypto.keys import ReceiptVerifyKey, parse_signature_parts
from qward.encoding import b64encode
from qward.errors import FormatError, SignatureError

__all__ = ["ReceiptSignature", "ed25519_message", "verify_signature"]

_SIGNATURE_LEN = {"mldsa65": 3309, "mldsa87": 4627, "ed25519": 64}
_NAMES = {"mldsa65": "ML-DSA-65", "mldsa87": "ML-DSA-87", "ed25519": "Ed25519"}


def ed25519_message(context: bytes, message: bytes) -> bytes:
    """The bytes Ed25519 signs: the context, length-prefixed, then the message."""
    return len(context).to_bytes(1, "big") + context + message


@dataclass(frozen=True, kw_only=True)
class ReceiptSignature:
    """One signature per suite component over one message, named by suite and signing key id."""

    suite: str
    key_id: str
    parts: tuple[tuple[str, bytes], ...]

    def to_json(self) -> dict[str, str]:
        """Wire form."""
        doc = {"suite": self.suite, "key_id": self.key_id}
        doc.update({name: b64encode(value) for name, value in self.parts})
        return doc

    @classmethod
    def from_json(cls, doc: object) -> ReceiptSignature:
        """Parse the wire form strictly: known suite, its components, their exact lengths."""
        suite, key_id, parts = parse_signature_parts(doc, what="signature")
        if any(len(value) != _SIGNATURE_LEN[name] for name, value in parts):
            raise FormatError("signature: wrong signature lengths")
        return cls(suite=suite, key_id=key_id, parts=parts)


def verify_signature(
    message: bytes, signature: ReceiptSignature, key: ReceiptVerifyKey, *, context: bytes
) -> None:
    """Verify every component of ``signature`` over ``message``; raise ``SignatureError``."""
    if signature.key_id != key.key_id:
        raise SignatureError(
            f"signature is by key {signature.key_id}, not the trusted key {key.key_id}"
        )
    if signature.suite != key.suite:
        raise SignatureError(f"signature suite {signature.suite} is not the key's {key.suite}")
    public = key.components()
    for name, value in signature.parts:
        component = public[name]
        try:
            if isinstance(component, ed25519.Ed25519PublicKey):
                component.verify(value, ed25519_message(context, message))
            else:
                component.verify(value, message, context)
        except InvalidSignature:
            raise SignatureError(f"{_NAMES[name]} signature does not verify") from None
