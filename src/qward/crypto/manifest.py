"""The key manifest: every key's public half, purpose, suite, version and state, signed by the root.

The core's root key (ML-DSA-87) signs one canonical-JSON document listing every key version it
holds. Anyone with the manifest can check which key is primary for each purpose, which are still
enabled (open and verify only) and which are retired (refuse any new use), and can verify old
receipts with the public halves of earlier versions. The signature is ML-DSA-87 with the domain
label ``qward/key-manifest/v1`` as its FIPS 204 context string.

Invariants checked on every parse: versions are unique per purpose, key ids are unique and match
their public keys, and every purpose present has exactly one primary key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from qward.crypto.keys import SIGNATURE_LAYOUT, HPKERecipientKey, ReceiptVerifyKey, key_id_for
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, NotFoundError, SignatureError
from qward.suites import (
    KEM_SUITES,
    MLDSA87,
    NOTE_ED25519_MLDSA44,
    Policy,
    require_suite,
)

__all__ = [
    "MANIFEST_CONTEXT",
    "MANIFEST_FORMAT",
    "KeyManifest",
    "KeyRecord",
    "KeyState",
    "Purpose",
    "record_key_id",
    "signed_manifest_bytes",
    "verify_manifest",
]

MANIFEST_FORMAT = "qward/key-manifest/v1"
MANIFEST_CONTEXT = MANIFEST_FORMAT.encode("ascii")
_MAX_MANIFEST = 1024 * 1024
_MLDSA87_PUBLIC_LEN = 2592


class Purpose(enum.StrEnum):
    """What a key is for."""

    HPKE_UNWRAP = "hpke-unwrap"
    RECEIPT_SIGNING = "receipt-signing"
    CHECKPOINT_SIGNING = "checkpoint-signing"


class KeyState(enum.StrEnum):
    """A key version's state: exactly one primary per purpose."""

    PRIMARY = "primary"
    ENABLED = "enabled"
    RETIRED = "retired"


_PURPOSE_SUITES: dict[Purpose, frozenset[str]] = {
    Purpose.HPKE_UNWRAP: KEM_SUITES,
    Purpose.RECEIPT_SIGNING: frozenset(SIGNATURE_LAYOUT),
    Purpose.CHECKPOINT_SIGNING: frozenset({NOTE_ED25519_MLDSA44}),
}
# Component order (for key ids) and lengths of the suites that have no key class of their own.
_OTHER_LAYOUTS = {
    NOTE_ED25519_MLDSA44: (("ed25519", 32), ("mldsa44", 1312)),
}


def record_key_id(suite: str, public: dict[str, bytes]) -> str:
    """The key id of a public key given as named components; ``FormatError`` if malformed."""
    if suite in KEM_SUITES:
        return HPKERecipientKey.from_components(suite, public).key_id
    if suite in SIGNATURE_LAYOUT:
        # Receipt keys of every suite, and the ML-DSA-87 root key.
        return ReceiptVerifyKey.from_public(suite, public).key_id
    layout = _OTHER_LAYOUTS.get(suite)
    if layout is None or set(public) != {n for n, _ in layout}:
        raise FormatError(f"key components do not match suite {suite!r}")
    if any(len(public[n]) != length for n, length in layout):
        raise FormatError(f"wrong public key length for suite {suite}")
    return key_id_for(suite, b"".join(public[n] for n, _ in layout))


@dataclass(frozen=True, kw_only=True)
class KeyRecord:
    """One key version as the manifest lists it."""

    key_id: str
    purpose: Purpose
    suite: str
    version: int
    state: KeyState
    public: dict[str, bytes]

    def to_json(self) -> dict[str, Any]:
        """Wire form."""
        return {
            "key_id": self.key_id,
            "purpose": self.purpose.value,
            "suite": self.suite,
            "version": self.version,
            "state": self.state.value,
            "public": {n: b64encode(v) for n, v in self.public.items()},
        }

    @classmethod
    def from_json(cls, doc: object) -> KeyRecord:
        """Parse the wire form, recomputing the key id from the public key."""
        fields = {"key_id", "purpose", "suite", "version", "state", "public"}
        if not isinstance(doc, dict) or set(doc) != fields:
            raise FormatError(f"key manifest: a key needs exactly {sorted(fields)}")
        try:
            purpose, state = Purpose(doc["purpose"]), KeyState(doc["state"])
        except ValueError:
            raise FormatError("key manifest: unknown purpose or state") from None
        suite = require_suite(doc["suite"], expected=_PURPOSE_SUITES[purpose], what="key manifest")
        version, public = doc["version"], doc["public"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise FormatError("key manifest: version must be a positive integer")
        if not isinstance(public, dict):
            raise FormatError("key manifest: public must be an object")
        raw = {n: b64decode(v, what=f"key manifest {n}") for n, v in public.items()}
        if record_key_id(suite, raw) != doc["key_id"]:
            raise FormatError(f"key manifest: key id {doc['key_id']!r} does not match its key")
        return cls(
            key_id=doc["key_id"],
            purpose=purpose,
            suite=suite,
            version=version,
            state=state,
            public=raw,
        )


@dataclass(frozen=True, kw_only=True)
class KeyManifest:
    """The manifest body: origin, policy, a serial number that grows with every change, the root
    public key and every key version."""

    origin: str
    policy: Policy
    serial: int
    root_public: bytes
    keys: tuple[KeyRecord, ...]

    def __post_init__(self) -> None:
        if len(self.root_public) != _MLDSA87_PUBLIC_LEN:
            raise FormatError("key manifest: root key must be an ML-DSA-87 public key")
        seen_ids: set[str] = set()
        seen_versions: set[tuple[Purpose, int]] = set()
        for key in self.keys:
            if key.key_id in seen_ids or (key.purpose, key.version) in seen_versions:
                raise FormatError(f"key manifest: key {key.key_id} is listed twice")
            seen_ids.add(key.key_id)
            seen_versions.add((key.purpose, key.version))
        for purpose in {k.purpose for k in self.keys}:
            primaries = [k for k in self.keys if k.purpose == purpose and k.state == "primary"]
            if len(primaries) != 1:
                raise FormatError(
                    f"key manifest: purpose {purpose} has {len(primaries)} primary keys, not 1"
                )

    @property
    def root_key_id(self) -> str:
        """Key id of the ML-DSA-87 root key."""
        return key_id_for(MLDSA87, self.root_public)

    def body(self) -> dict[str, Any]:
        """The signed JSON body."""
        return {
            "format": MANIFEST_FORMAT,
            "origin": self.origin,
            "policy": self.policy.value,
            "serial": self.serial,
            "root": {
                "suite": MLDSA87,
                "key_id": self.root_key_id,
                "mldsa87": b64encode(self.root_public),
            },
            "keys": [k.to_json() for k in self.keys],
        }

    def signed_message(self) -> bytes:
        """The bytes the root key signs: canonical JSON of the body."""
        return canonical_json(self.body())

    def find(self, key_id: str) -> KeyRecord:
        """The record of ``key_id``; ``NotFoundError`` if the manifest does not list it."""
        for key in self.keys:
            if key.key_id == key_id:
                return key
        raise NotFoundError(f"key {key_id} is not in the key manifest")

    def primary(self, purpose: Purpose) -> KeyRecord:
        """The primary key of ``purpose``."""
        for key in self.keys:
            if key.purpose == purpose and key.state == KeyState.PRIMARY:
                return key
        raise NotFoundError(f"the key manifest has no primary {purpose} key")

    def receipt_keys(self) -> tuple[ReceiptVerifyKey, ...]:
        """Every receipt-signing public key, primary first: old receipts verify with these."""
        keys = sorted(
            (k for k in self.keys if k.purpose == Purpose.RECEIPT_SIGNING),
            key=lambda k: (k.state != KeyState.PRIMARY, -k.version),
        )
        return tuple(ReceiptVerifyKey.from_public(k.suite, k.public) for k in keys)

    @classmethod
    def from_body(cls, doc: object) -> KeyManifest:
        """Strictly parse a manifest body."""
        fields = {"format", "origin", "policy", "serial", "root", "keys"}
        if not isinstance(doc, dict) or set(doc) != fields:
            raise FormatError(f"key manifest: body needs exactly {sorted(fields)}")
        if doc["format"] != MANIFEST_FORMAT:
            raise FormatError(f"key manifest: unsupported format {doc['format']!r}")
        origin, serial, root, keys = doc["origin"], doc["serial"], doc["root"], doc["keys"]
        if not isinstance(origin, str) or not isinstance(keys, list) or not isinstance(root, dict):
            raise FormatError("key manifest: origin, root and keys are required")
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
            raise FormatError("key manifest: serial must be a non-negative integer")
        try:
            policy = Policy(doc["policy"])
        except ValueError:
            raise FormatError(f"key manifest: unknown policy {doc['policy']!r}") from None
        require_suite(root.get("suite"), expected=MLDSA87, what="key manifest root")
        manifest = cls(
            origin=origin,
            policy=policy,
            serial=serial,
            root_public=b64decode(root.get("mldsa87"), what="key manifest root"),
            keys=tuple(KeyRecord.from_json(k) for k in keys),
        )
        if root.get("key_id") != manifest.root_key_id or set(root) != {
            "suite",
            "key_id",
            "mldsa87",
        }:
            raise FormatError("key manifest: root key id does not match the root key")
        return manifest


def signed_manifest_bytes(manifest: KeyManifest, signature: bytes) -> bytes:
    """The signed manifest file: the body and the root's ML-DSA-87 signature over it."""
    return canonical_json(
        {
            "manifest": manifest.body(),
            "signature": {
                "suite": MLDSA87,
                "key_id": manifest.root_key_id,
                "value": b64encode(signature),
            },
        }
    )


def verify_manifest(data: bytes, *, root_key_id: str | None = None) -> KeyManifest:
    """Verify a signed manifest and return its body; raise ``SignatureError`` or ``FormatError``.

    1. Parse strictly (canonical JSON, known format, every field typed, invariants hold).
    2. If ``root_key_id`` is given (pinned out of band), the manifest's root must be that key;
       without a pin the embedded root is trusted on first use, which the caller must accept.
    3. Verify the ML-DSA-87 signature over the canonical body with the manifest context.
    """
    if len(data) > _MAX_MANIFEST:
        raise FormatError("key manifest is over the size limit")
    doc = parse_canonical_json(data, what="key manifest")
    if set(doc) != {"manifest", "signature"} or not isinstance(doc["signature"], dict):
        raise FormatError("key manifest: expected manifest and signature")
    manifest = KeyManifest.from_body(doc["manifest"])
    sig = doc["signature"]
    require_suite(sig.get("suite"), expected=MLDSA87, what="key manifest signature")
    if sig.get("key_id") != manifest.root_key_id:
        raise SignatureError("key manifest: signature names a different key than the root")
    if root_key_id is not None and manifest.root_key_id != root_key_id:
        raise SignatureError(
            f"key manifest is signed by root {manifest.root_key_id}, not the pinned {root_key_id}"
        )
    value = b64decode(sig.get("value"), what="key manifest signature")
    try:
        mldsa.MLDSA87PublicKey.from_public_bytes(manifest.root_public).verify(
            value, manifest.signed_message(), MANIFEST_CONTEXT
        )
    except (InvalidSignature, ValueError):
        raise SignatureError(
            "key manifest: the root's ML-DSA-87 signature does not verify"
        ) from None
    return manifest
