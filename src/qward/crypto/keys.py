"""Public key types and key ids.

A key id is derived from the suite and the public key bytes, so two different keys never share an
id and an id can be recomputed by anyone holding the public key.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519 as ed
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.asymmetric import x25519 as xdh
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from qward.encoding import b64decode, b64encode, domain_hash
from qward.errors import FormatError
from qward.suites import MLDSA65_ED25519, MLKEM768_X25519_HKDF_SHA256_AES_256_GCM, require_suite

__all__ = ["HPKERecipientKey", "HybridVerifyKey", "key_id_for"]

_MLKEM768_PUBLIC_LEN = 1184
_MLDSA65_PUBLIC_LEN = 1952
_RAW32 = 32


def key_id_for(suite: str, public_bytes: bytes) -> str:
    """The 16-hex-digit id of a public key under ``suite``."""
    return domain_hash("qward/key-id/v1", suite.encode("ascii") + b"\x00" + public_bytes).hex()[:16]


def _raw(key: xdh.X25519PublicKey | ed.Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, kw_only=True)
class HPKERecipientKey:
    """The public half of a hybrid ML-KEM-768 + X25519 HPKE key: what a sealer needs."""

    mlkem768: bytes
    x25519: bytes
    suite: str = MLKEM768_X25519_HKDF_SHA256_AES_256_GCM

    def __post_init__(self) -> None:
        if len(self.mlkem768) != _MLKEM768_PUBLIC_LEN or len(self.x25519) != _RAW32:
            raise FormatError("HPKE recipient key: wrong public key lengths")

    @property
    def key_id(self) -> str:
        """Key id over both public components."""
        return key_id_for(self.suite, self.mlkem768 + self.x25519)

    def to_hpke(self) -> hpke.MLKEM768X25519PublicKey:
        """The pyca/cryptography HPKE public key object."""
        try:
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(self.mlkem768),
                xdh.X25519PublicKey.from_public_bytes(self.x25519),
            )
        except ValueError:
            raise FormatError("HPKE recipient key: invalid public key") from None

    @classmethod
    def from_hpke_parts(
        cls, mlkem_key: mlkem.MLKEM768PublicKey, x25519_key: xdh.X25519PublicKey
    ) -> HPKERecipientKey:
        """Build from the two component public keys."""
        return cls(mlkem768=mlkem_key.public_bytes_raw(), x25519=_raw(x25519_key))

    def to_json(self) -> dict[str, str]:
        """Wire form."""
        return {
            "suite": self.suite,
            "key_id": self.key_id,
            "mlkem768": b64encode(self.mlkem768),
            "x25519": b64encode(self.x25519),
        }

    @classmethod
    def from_json(cls, doc: object) -> HPKERecipientKey:
        """Parse the wire form, checking that the stated key id matches the key."""
        if not isinstance(doc, dict):
            raise FormatError("HPKE recipient key: expected an object")
        require_suite(
            doc.get("suite"),
            expected=MLKEM768_X25519_HKDF_SHA256_AES_256_GCM,
            what="HPKE recipient key",
        )
        key = cls(
            mlkem768=b64decode(doc.get("mlkem768"), what="HPKE recipient key mlkem768"),
            x25519=b64decode(doc.get("x25519"), what="HPKE recipient key x25519"),
        )
        if doc.get("key_id") != key.key_id:
            raise FormatError("HPKE recipient key: key_id does not match the key")
        return key


@dataclass(frozen=True, kw_only=True)
class HybridVerifyKey:
    """An ML-DSA-65 + Ed25519 verification key; a signature must verify under both halves."""

    mldsa65: bytes
    ed25519: bytes
    suite: str = MLDSA65_ED25519

    def __post_init__(self) -> None:
        if len(self.mldsa65) != _MLDSA65_PUBLIC_LEN or len(self.ed25519) != _RAW32:
            raise FormatError("hybrid verification key: wrong public key lengths")

    @property
    def key_id(self) -> str:
        """Key id over both public components."""
        return key_id_for(self.suite, self.mldsa65 + self.ed25519)

    def components(self) -> tuple[mldsa.MLDSA65PublicKey, ed.Ed25519PublicKey]:
        """The two pyca/cryptography public key objects."""
        try:
            return (
                mldsa.MLDSA65PublicKey.from_public_bytes(self.mldsa65),
                ed.Ed25519PublicKey.from_public_bytes(self.ed25519),
            )
        except ValueError:
            raise FormatError("hybrid verification key: invalid public key") from None

    @classmethod
    def from_components(
        cls, mldsa_key: mldsa.MLDSA65PublicKey, ed_key: ed.Ed25519PublicKey
    ) -> HybridVerifyKey:
        """Build from the two component public keys."""
        return cls(mldsa65=mldsa_key.public_bytes_raw(), ed25519=_raw(ed_key))

    def to_json(self) -> dict[str, str]:
        """Wire form."""
        return {
            "suite": self.suite,
            "key_id": self.key_id,
            "mldsa65": b64encode(self.mldsa65),
            "ed25519": b64encode(self.ed25519),
        }

    @classmethod
    def from_json(cls, doc: object) -> HybridVerifyKey:
        """Parse the wire form, checking that the stated key id matches the key."""
        if not isinstance(doc, dict):
            raise FormatError("hybrid verification key: expected an object")
        require_suite(doc.get("suite"), expected=MLDSA65_ED25519, what="hybrid verification key")
        key = cls(
            mldsa65=b64decode(doc.get("mldsa65"), what="verification key mldsa65"),
            ed25519=b64decode(doc.get("ed25519"), what="verification key ed25519"),
        )
        if doc.get("key_id") != key.key_id:
            raise FormatError("hybrid verification key: key_id does not match the key")
        return key
