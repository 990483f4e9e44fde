"""Public key types and key ids.

A key id is derived from the suite and the public key bytes, so two different keys never share an
id and an id can be recomputed by anyone holding the public key.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519 as ed
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.asymmetric import x25519 as xdh
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from qward.encoding import b64decode, b64encode, domain_hash
from qward.errors import FormatError
from qward.suites import (
    ED25519,
    KEM_SUITES,
    MLDSA65,
    MLDSA65_ED25519,
    MLDSA87,
    MLKEM768_HKDF_SHA256_AES_256_GCM,
    MLKEM768_X25519_HKDF_SHA256_AES_256_GCM,
    MLKEM1024_HKDF_SHA384_AES_256_GCM,
    X25519_HKDF_SHA256_AES_256_GCM,
    require_suite,
)

__all__ = [
    "SIGNATURE_LAYOUT",
    "HPKEPublicKey",
    "HPKERecipientKey",
    "ReceiptVerifyKey",
    "SignaturePublicKey",
    "key_id_for",
    "parse_signature_parts",
]

_MLKEM768_PUBLIC_LEN = 1184
_MLKEM1024_PUBLIC_LEN = 1568
_MLDSA65_PUBLIC_LEN = 1952
_MLDSA87_PUBLIC_LEN = 2592
_RAW32 = 32


def key_id_for(suite: str, public_bytes: bytes) -> str:
    """The 16-hex-digit id of a public key under ``suite``."""
    return domain_hash("qward/key-id/v1", suite.encode("ascii") + b"\x00" + public_bytes).hex()[:16]


def _raw(key: xdh.X25519PublicKey | ed.Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


# The public components of each KEM suite, in key-id order, with their lengths.
_HPKE_LAYOUT: dict[str, tuple[tuple[str, int], ...]] = {
    X25519_HKDF_SHA256_AES_256_GCM: (("x25519", _RAW32),),
    MLKEM768_X25519_HKDF_SHA256_AES_256_GCM: (
        ("mlkem768", _MLKEM768_PUBLIC_LEN),
        ("x25519", _RAW32),
    ),
    MLKEM768_HKDF_SHA256_AES_256_GCM: (("mlkem768", _MLKEM768_PUBLIC_LEN),),
    MLKEM1024_HKDF_SHA384_AES_256_GCM: (("mlkem1024", _MLKEM1024_PUBLIC_LEN),),
}

HPKEPublicKey = (
    hpke.MLKEM768X25519PublicKey
    | xdh.X25519PublicKey
    | mlkem.MLKEM768PublicKey
    | mlkem.MLKEM1024PublicKey
)


@dataclass(frozen=True, kw_only=True)
class HPKERecipientKey:
    """The public half of an HPKE key under one KEM suite: what a sealer needs.

    The default suite is the hybrid ML-KEM-768 + X25519; the other suites of ``qward.suites``
    use only the components they name (the rest stay empty).
    """

    mlkem768: bytes = b""
    x25519: bytes = b""
    mlkem1024: bytes = b""
    suite: str = MLKEM768_X25519_HKDF_SHA256_AES_256_GCM

    def __post_init__(self) -> None:
        layout = _HPKE_LAYOUT.get(self.suite)
        if layout is None:
            raise FormatError(f"HPKE recipient key: unknown suite {self.suite!r}")
        needed = dict(layout)
        for name in ("mlkem768", "x25519", "mlkem1024"):
            value = getattr(self, name)
            if len(value) != needed.get(name, 0):
                raise FormatError(f"HPKE recipient key: wrong {name} length for {self.suite}")

    def components(self) -> dict[str, bytes]:
        """The suite's public components by name, in key-id order."""
        return {name: getattr(self, name) for name, _ in _HPKE_LAYOUT[self.suite]}

    # Both are derived from the frozen fields once: a server seals to the same key per request.
    @functools.cached_property
    def key_id(self) -> str:
        """Key id over every public component of the suite."""
        return key_id_for(self.suite, b"".join(self.components().values()))

    def to_hpke(self) -> HPKEPublicKey:
        """The pyca/cryptography public key object HPKE encrypts to."""
        return self._hpke_public

    @functools.cached_property
    def _hpke_public(self) -> HPKEPublicKey:
        try:
            if self.suite == MLKEM768_X25519_HKDF_SHA256_AES_256_GCM:
                return hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(self.mlkem768),
                    xdh.X25519PublicKey.from_public_bytes(self.x25519),
                )
            if self.suite == X25519_HKDF_SHA256_AES_256_GCM:
                return xdh.X25519PublicKey.from_public_bytes(self.x25519)
            if self.suite == MLKEM768_HKDF_SHA256_AES_256_GCM:
                return mlkem.MLKEM768PublicKey.from_public_bytes(self.mlkem768)
            return mlkem.MLKEM1024PublicKey.from_public_bytes(self.mlkem1024)
        except ValueError:
            raise FormatError("HPKE recipient key: invalid public key") from None

    @classmethod
    def from_hpke_parts(
        cls, mlkem_key: mlkem.MLKEM768PublicKey, x25519_key: xdh.X25519PublicKey
    ) -> HPKERecipientKey:
        """Build a hybrid key from the two component public keys."""
        return cls(mlkem768=mlkem_key.public_bytes_raw(), x25519=_raw(x25519_key))

    @classmethod
    def from_components(cls, suite: str, components: dict[str, bytes]) -> HPKERecipientKey:
        """Build from a suite id and its named public components (as ``components()`` gives)."""
        layout = _HPKE_LAYOUT.get(suite)
        if layout is None or set(components) != {name for name, _ in layout}:
            raise FormatError(f"HPKE recipient key: components do not match suite {suite!r}")
        return cls(suite=suite, **components)

    def to_json(self) -> dict[str, str]:
        """Wire form."""
        doc = {"suite": self.suite, "key_id": self.key_id}
        doc.update({name: b64encode(value) for name, value in self.components().items()})
        return doc

    @classmethod
    def from_json(cls, doc: object) -> HPKERecipientKey:
        """Parse the wire form, checking that the stated key id matches the key."""
        if not isinstance(doc, dict):
            raise FormatError("HPKE recipient key: expected an object")
        suite = require_suite(doc.get("suite"), expected=KEM_SUITES, what="HPKE recipient key")
        names = [name for name, _ in _HPKE_LAYOUT[suite]]
        if set(doc) != {"suite", "key_id", *names}:
            raise FormatError(f"HPKE recipient key: expected suite, key_id and {names}")
        key = cls.from_components(
            suite,
            {n: b64decode(doc.get(n), what=f"HPKE recipient key {n}") for n in names},
        )
        if doc.get("key_id") != key.key_id:
            raise FormatError("HPKE recipient key: key_id does not match the key")
        return key


def parse_signature_parts(
    doc: object, *, what: str
) -> tuple[str, str, tuple[tuple[str, bytes], ...]]:
    """(suite, key_id, components) of the wire form receipt keys and signatures share:
    ``{"suite", "key_id", <one base64 field per component of the suite>}``, nothing else."""
    if not isinstance(doc, dict):
        raise FormatError(f"{what}: expected an object")
    suite = require_suite(doc.get("suite"), expected=frozenset(SIGNATURE_LAYOUT), what=what)
    names = [name for name, _ in SIGNATURE_LAYOUT[suite]]
    if set(doc) != {"suite", "key_id", *names}:
        raise FormatError(f"{what}: expected suite, key_id and {', '.join(names)}")
    if not isinstance(doc["key_id"], str):
        raise FormatError(f"{what}: key_id must be a string")
    parts = tuple((n, b64decode(doc[n], what=f"{what} {n}")) for n in names)
    return suite, doc["key_id"], parts


#: The public components of each receipt-signature suite, in key-id order, with their lengths.
SIGNATURE_LAYOUT: dict[str, tuple[tuple[str, int], ...]] = {
    MLDSA65_ED25519: (("mldsa65", _MLDSA65_PUBLIC_LEN), ("ed25519", _RAW32)),
    MLDSA65: (("mldsa65", _MLDSA65_PUBLIC_LEN),),
    MLDSA87: (("mldsa87", _MLDSA87_PUBLIC_LEN),),
    ED25519: (("ed25519", _RAW32),),
}

SignaturePublicKey = mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey | ed.Ed25519PublicKey


def _signature_public(name: str, value: bytes) -> SignaturePublicKey:
    if name == "mldsa65":
        return mldsa.MLDSA65PublicKey.from_public_bytes(value)
    if name == "mldsa87":
        return mldsa.MLDSA87PublicKey.from_public_bytes(value)
    return ed.Ed25519PublicKey.from_public_bytes(value)


@dataclass(frozen=True, kw_only=True)
class ReceiptVerifyKey:
    """A receipt verification key under one signature suite: every component must verify.

    ``MLDSA65_ED25519`` (the hybrid default) has two components; ``MLDSA65``, ``MLDSA87`` and
    ``ED25519`` (the pq-only, cnsa and classical policies) have one each.
    """

    suite: str
    parts: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        layout = SIGNATURE_LAYOUT.get(self.suite)
        if layout is None:
            raise FormatError(f"receipt verification key: unknown suite {self.suite!r}")
        if [(n, len(v)) for n, v in self.parts] != list(layout):
            raise FormatError(f"receipt verification key: wrong components for {self.suite}")

    @functools.cached_property
    def key_id(self) -> str:
        """Key id over every public component, in order."""
        return key_id_for(self.suite, b"".join(v for _, v in self.parts))

    def components(self) -> dict[str, SignaturePublicKey]:
        """The pyca/cryptography public key objects, by component name."""
        try:
            return {name: _signature_public(name, value) for name, value in self.parts}
        except ValueError:
            raise FormatError("receipt verification key: invalid public key") from None

    @classmethod
    def from_public(cls, suite: str, public: dict[str, bytes]) -> ReceiptVerifyKey:
        """Build from raw public components named as in ``SIGNATURE_LAYOUT``."""
        names = [name for name, _ in SIGNATURE_LAYOUT.get(suite, ())]
        if set(public) != set(names):
            raise FormatError(f"receipt verification key: {suite} needs components {names}")
        return cls(suite=suite, parts=tuple((n, public[n]) for n in names))

    def to_json(self) -> dict[str, str]:
        """Wire form: suite, key_id and each component in base64."""
        doc = {"suite": self.suite, "key_id": self.key_id}
        doc.update({name: b64encode(value) for name, value in self.parts})
        return doc

    @classmethod
    def from_json(cls, doc: object) -> ReceiptVerifyKey:
        """Parse the wire form, checking that the stated key id matches the key."""
        suite, key_id, parts = parse_signature_parts(doc, what="receipt verification key")
        key = cls(suite=suite, parts=parts)
        if key_id != key.key_id:
            raise FormatError("receipt verification key: key_id does not match the key")
        return key
