"""The hybrid ML-DSA-65 + Ed25519 signer used for receipts."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.crypto.keys import HybridVerifyKey
from qward.crypto.signatures import HybridSignature, ed25519_message
from qward.protected.handles import KeyHandle

__all__ = ["HybridSigner"]


class HybridSigner:
    """Signs with both halves of a hybrid key; the private halves stay in key handles."""

    def __init__(
        self, *, mldsa_key: mldsa.MLDSA65PrivateKey, ed_key: ed25519.Ed25519PrivateKey
    ) -> None:
        self.public_key = HybridVerifyKey.from_components(
            mldsa_key.public_key(), ed_key.public_key()
        )
        self.key_id = self.public_key.key_id
        self._mldsa: KeyHandle[mldsa.MLDSA65PrivateKey] = KeyHandle(
            purpose="receipt-mldsa65", key_id=self.key_id, key=mldsa_key
        )
        self._ed: KeyHandle[ed25519.Ed25519PrivateKey] = KeyHandle(
            purpose="receipt-ed25519", key_id=self.key_id, key=ed_key
        )

    def sign(self, message: bytes, *, context: bytes) -> HybridSignature:
        """Sign ``message`` under the domain label ``context``."""
        return HybridSignature(
            key_id=self.key_id,
            mldsa65=self._mldsa.unsafe_key().sign(message, context),
            ed25519=self._ed.unsafe_key().sign(ed25519_message(context, message)),
        )

    def __repr__(self) -> str:
        return f"HybridSigner(key_id={self.key_id!r})"
