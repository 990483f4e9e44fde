"""The receipt signer: one private key per component of its suite, each behind a key handle."""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.crypto.keys import SIGNATURE_LAYOUT, ReceiptVerifyKey
from qward.crypto.signatures import ReceiptSignature, ed25519_message
from qward.errors import KeystoreError
from qward.protected.handles import KeyHandle

__all__ = ["ReceiptSigner", "receipt_private_keys"]

_PrivateKey = mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey | ed25519.Ed25519PrivateKey


def receipt_private_keys(suite: str, seeds: Mapping[str, bytes]) -> dict[str, _PrivateKey]:
    """The private component keys of ``suite`` from the keystore's seeds, by component name."""
    try:
        return {name: _private(name, seeds) for name, _ in SIGNATURE_LAYOUT[suite]}
    except (KeyError, ValueError):
        raise KeystoreError(f"keystore is damaged: a {suite} receipt key does not load") from None


def _private(name: str, seeds: Mapping[str, bytes]) -> _PrivateKey:
    if name == "mldsa65":
        return mldsa.MLDSA65PrivateKey.from_seed_bytes(seeds["mldsa65_seed"])
    if name == "mldsa87":
        return mldsa.MLDSA87PrivateKey.from_seed_bytes(seeds["mldsa87_seed"])
    return ed25519.Ed25519PrivateKey.from_private_bytes(seeds["ed25519"])


class ReceiptSigner:
    """Signs receipts with every component of its suite; the private keys stay in handles."""

    def __init__(self, *, suite: str, keys: Mapping[str, _PrivateKey]) -> None:
        self.public_key = ReceiptVerifyKey.from_public(
            suite, {name: key.public_key().public_bytes_raw() for name, key in keys.items()}
        )
        self.key_id = self.public_key.key_id
        self.suite = suite
        self._keys: dict[str, KeyHandle[_PrivateKey]] = {
            name: KeyHandle(purpose=f"receipt-{name}", key_id=self.key_id, key=key)
            for name, key in keys.items()
        }

    def sign(self, message: bytes, *, context: bytes) -> ReceiptSignature:
        """Sign ``message`` under the domain label ``context`` with every component."""
        parts = []
        for name, _ in self.public_key.parts:
            key = self._keys[name].unsafe_key()
            if isinstance(key, ed25519.Ed25519PrivateKey):
                parts.append((name, key.sign(ed25519_message(context, message))))
            else:
                parts.append((name, key.sign(message, context)))
        return ReceiptSignature(suite=self.suite, key_id=self.key_id, parts=tuple(parts))

    def __repr__(self) -> str:
        return f"ReceiptSigner(suite={self.suite!r}, key_id={self.key_id!r})"
