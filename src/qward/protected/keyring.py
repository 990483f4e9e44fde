"""The core's key hierarchy: an ML-DSA-87 root key and versioned keys for every purpose.

WARNING: this module holds private key material. Only ``qward.protected`` may import it.

Each purpose (``hpke-unwrap``, ``receipt-signing``, ``checkpoint-signing``) has one or more
versions. Exactly one is primary: new seals go to the primary KEK and new receipts are signed by the
primary signer. Enabled versions still open and verify what was made under them; retired versions
refuse any use of their private key, with an error naming the key id and state. The root key signs
a ``KeyManifest`` listing every version's public half, so the hierarchy can be checked offline.

Key material is kept as seeds inside ``KeyHandle`` objects; the private key objects built from them
are cached per version, also behind handles.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from qward.crypto.keys import SIGNATURE_LAYOUT, HPKERecipientKey
from qward.crypto.manifest import KeyManifest, KeyRecord, KeyState, Purpose, record_key_id
from qward.encoding import b64decode, b64encode
from qward.errors import CryptoError, FormatError, InputError, KeystoreError, UnknownKeyError
from qward.protected.handles import HPKEPrivateKey, KeyHandle
from qward.protected.signing import ReceiptSigner, receipt_private_keys
from qward.suites import (
    DEFAULT_POLICY,
    ED25519,
    MLDSA65,
    MLDSA65_ED25519,
    MLDSA87,
    MLKEM768_HKDF_SHA256_AES_256_GCM,
    MLKEM768_X25519_HKDF_SHA256_AES_256_GCM,
    MLKEM1024_HKDF_SHA384_AES_256_GCM,
    NOTE_ED25519_MLDSA44,
    X25519_HKDF_SHA256_AES_256_GCM,
    Policy,
    suite_policy,
)
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner, NoteSigner, NoteVerifier

__all__ = ["MATERIAL_FORMAT", "KeyRing", "KeyVersion"]

MATERIAL_FORMAT = "qward/keystore-material/v2"
# Seed sections keep the v1 names: purpose -> {"v<version>/<component>": base64 seed}.
_SECTIONS = {
    Purpose.HPKE_UNWRAP: "hpke",
    Purpose.RECEIPT_SIGNING: "receipt",
    Purpose.CHECKPOINT_SIGNING: "log",
}
# The secret components each suite is stored as, and their lengths.
_SEEDS: dict[str, tuple[tuple[str, int], ...]] = {
    X25519_HKDF_SHA256_AES_256_GCM: (("x25519", 32),),
    MLKEM768_X25519_HKDF_SHA256_AES_256_GCM: (("mlkem768_seed", 64), ("x25519", 32)),
    MLKEM768_HKDF_SHA256_AES_256_GCM: (("mlkem768_seed", 64),),
    MLKEM1024_HKDF_SHA384_AES_256_GCM: (("mlkem1024_seed", 64),),
    MLDSA65_ED25519: (("mldsa65_seed", 32), ("ed25519", 32)),
    MLDSA65: (("mldsa65_seed", 32),),
    MLDSA87: (("mldsa87_seed", 32),),
    ED25519: (("ed25519", 32),),
    NOTE_ED25519_MLDSA44: (("mldsa44_seed", 32), ("ed25519", 32)),
}


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _fresh_seeds(suite: str) -> dict[str, bytes]:
    # X25519 and Ed25519 private keys are any 32 random bytes (clamping happens on use), and
    # ML-KEM / ML-DSA seeds are uniformly random by definition (FIPS 203 d||z, FIPS 204 xi).
    return {name: secrets.token_bytes(length) for name, length in _SEEDS[suite]}


def _hpke_private(suite: str, seeds: dict[str, bytes]) -> HPKEPrivateKey:
    if suite == MLKEM768_X25519_HKDF_SHA256_AES_256_GCM:
        return hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(seeds["mlkem768_seed"]),
            x25519.X25519PrivateKey.from_private_bytes(seeds["x25519"]),
        )
    if suite == X25519_HKDF_SHA256_AES_256_GCM:
        return x25519.X25519PrivateKey.from_private_bytes(seeds["x25519"])
    if suite == MLKEM768_HKDF_SHA256_AES_256_GCM:
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(seeds["mlkem768_seed"])
    return mlkem.MLKEM1024PrivateKey.from_seed_bytes(seeds["mlkem1024_seed"])


def _hpke_public(suite: str, seeds: dict[str, bytes]) -> dict[str, bytes]:
    parts: dict[str, bytes] = {}
    if "mlkem768_seed" in seeds:
        key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seeds["mlkem768_seed"])
        parts["mlkem768"] = key.public_key().public_bytes_raw()
    if "mlkem1024_seed" in seeds:
        key1024 = mlkem.MLKEM1024PrivateKey.from_seed_bytes(seeds["mlkem1024_seed"])
        parts["mlkem1024"] = key1024.public_key().public_bytes_raw()
    if "x25519" in seeds:
        xkey = x25519.X25519PrivateKey.from_private_bytes(seeds["x25519"]).public_key()
        parts["x25519"] = xkey.public_bytes_raw()
    return parts


def _public_components(purpose: Purpose, suite: str, seeds: dict[str, bytes]) -> dict[str, bytes]:
    if purpose == Purpose.HPKE_UNWRAP:
        return _hpke_public(suite, seeds)
    if purpose == Purpose.RECEIPT_SIGNING:
        keys = receipt_private_keys(suite, seeds)
        return {name: key.public_key().public_bytes_raw() for name, key in keys.items()}
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(seeds["ed25519"]).public_key()
    ml44 = mldsa.MLDSA44PrivateKey.from_seed_bytes(seeds["mldsa44_seed"]).public_key()
    return {"ed25519": ed.public_bytes_raw(), "mldsa44": ml44.public_bytes_raw()}


@dataclass(kw_only=True)
class KeyVersion:
    """One version of a purpose's key: its public half, state, and the seeds behind a handle."""

    purpose: Purpose
    version: int
    suite: str
    state: KeyState
    created_at: str
    seeds: KeyHandle[dict[str, bytes]]
    public: dict[str, bytes] = field(init=False)
    key_id: str = field(init=False)
    _objects: dict[str, Any] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        try:
            self.public = _public_components(self.purpose, self.suite, self.seeds.unsafe_key())
        except (ValueError, KeyError):
            raise KeystoreError(f"keystore is damaged: {self.purpose} v{self.version}") from None
        self.key_id = record_key_id(self.suite, self.public)

    def record(self) -> KeyRecord:
        """This version as the manifest lists it."""
        return KeyRecord(
            key_id=self.key_id,
            purpose=self.purpose,
            suite=self.suite,
            version=self.version,
            state=self.state,
            public=self.public,
        )

    def hpke_handle(self) -> KeyHandle[HPKEPrivateKey]:
        """The HPKE private key, behind a handle (built once)."""
        if "hpke" not in self._objects:
            key = _hpke_private(self.suite, self.seeds.unsafe_key())
            self._objects["hpke"] = KeyHandle(purpose="unseal", key_id=self.key_id, key=key)
        handle: KeyHandle[HPKEPrivateKey] = self._objects["hpke"]
        return handle

    def recipient(self) -> HPKERecipientKey:
        """The public HPKE key sealers encrypt to."""
        return HPKERecipientKey.from_components(self.suite, self.public)

    def receipt_signer(self) -> ReceiptSigner:
        """The receipt signer of this version (built once)."""
        if "receipt" not in self._objects:
            keys = receipt_private_keys(self.suite, self.seeds.unsafe_key())
            self._objects["receipt"] = ReceiptSigner(suite=self.suite, keys=keys)
        signer: ReceiptSigner = self._objects["receipt"]
        return signer

    def note_signers(self, origin: str) -> tuple[NoteSigner, ...]:
        """The checkpoint signers of this version (built once)."""
        if "log" not in self._objects:
            seeds = self.seeds.unsafe_key()
            self._objects["log"] = (
                Ed25519NoteSigner(
                    name=origin,
                    private_key=ed25519.Ed25519PrivateKey.from_private_bytes(seeds["ed25519"]),
                ),
                MLDSA44NoteSigner(
                    name=origin,
                    private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(seeds["mldsa44_seed"]),
                ),
            )
        signers: tuple[NoteSigner, ...] = self._objects["log"]
        return signers

    def __repr__(self) -> str:
        return f"KeyVersion({self.purpose} v{self.version} {self.key_id} {self.state})"


def _version(
    purpose: Purpose, version: int, suite: str, state: KeyState, at: str, seeds: dict[str, bytes]
) -> KeyVersion:
    handle = KeyHandle(purpose=f"{purpose}-seeds", key_id=f"{purpose}/v{version}", key=seeds)
    return KeyVersion(
        purpose=purpose, version=version, suite=suite, state=state, created_at=at, seeds=handle
    )


class KeyRing:
    """Every key version of one core, the root key and the policy; thread-safe."""

    def __init__(
        self,
        *,
        origin: str,
        policy: Policy,
        serial: int,
        root_seed: bytes,
        versions: list[KeyVersion],
        clock: Callable[[], str] = _utc_now,
    ) -> None:
        self.origin = origin
        self.policy = policy
        self.serial = serial
        self._root: KeyHandle[mldsa.MLDSA87PrivateKey] = KeyHandle(
            purpose="root", key_id="root", key=mldsa.MLDSA87PrivateKey.from_seed_bytes(root_seed)
        )
        self._root_seed = KeyHandle(purpose="root-seed", key_id="root", key=root_seed)
        self._versions = versions
        self._clock = clock
        self.lock = threading.RLock()
        self.manifest()  # checks the invariants (one primary per purpose, unique ids)

    # -- construction and storage -----------------------------------------------------------

    @classmethod
    def generate(
        cls, *, origin: str, policy: Policy = DEFAULT_POLICY, clock: Callable[[], str] = _utc_now
    ) -> KeyRing:
        """A fresh ring: a root key and version 1 of every purpose, all primary."""
        rules = suite_policy(policy)
        suites = {
            Purpose.HPKE_UNWRAP: rules.kem_suite,
            Purpose.RECEIPT_SIGNING: _receipt_suite(rules.signature_suite, policy),
            Purpose.CHECKPOINT_SIGNING: NOTE_ED25519_MLDSA44,
        }
        at = clock()
        versions = [
            _version(p, 1, s, KeyState.PRIMARY, at, _fresh_seeds(s)) for p, s in suites.items()
        ]
        return cls(
            origin=origin,
            policy=policy,
            serial=1,
            root_seed=secrets.token_bytes(32),
            versions=versions,
            clock=clock,
        )

    @classmethod
    def from_v1_material(cls, material: dict[str, Any], *, at: str) -> KeyRing:
        """Migrate v1 contents (one key per purpose, no root): each becomes primary version 1
        with the same seeds, so key ids, sealed artifacts and receipts stay valid."""
        layout = {
            Purpose.HPKE_UNWRAP: ("hpke", MLKEM768_X25519_HKDF_SHA256_AES_256_GCM),
            Purpose.RECEIPT_SIGNING: ("receipt", MLDSA65_ED25519),
            Purpose.CHECKPOINT_SIGNING: ("log", NOTE_ED25519_MLDSA44),
        }
        versions = []
        for purpose, (section, suite) in layout.items():
            body = material.get(section)
            if not isinstance(body, dict):
                raise KeystoreError(f"keystore is damaged: section {section} is missing")
            seeds = {n: _seed(body, n, section) for n, _ in _SEEDS[suite]}
            versions.append(_version(purpose, 1, suite, KeyState.PRIMARY, at, seeds))
        return cls(
            origin=_origin(material),
            policy=Policy.HYBRID,
            serial=1,
            root_seed=secrets.token_bytes(32),
            versions=versions,
        )

    @classmethod
    def from_material(cls, material: dict[str, Any]) -> KeyRing:
        """Load v2 contents (as written by ``to_material``)."""
        if material.get("format") != MATERIAL_FORMAT:
            raise KeystoreError(f"keystore contents format {material.get('format')!r} unknown")
        meta = material.get("versions")
        if not isinstance(meta, list):
            raise KeystoreError("keystore is damaged: no key versions")
        try:
            versions = [_load_version(material, m) for m in meta]
            policy = Policy(str(material.get("policy")))
        except (ValueError, TypeError, KeyError):
            raise KeystoreError("keystore is damaged: a key version is unreadable") from None
        serial = material.get("serial")
        if not isinstance(serial, int) or isinstance(serial, bool):
            raise KeystoreError("keystore is damaged: no manifest serial")
        return cls(
            origin=_origin(material),
            policy=policy,
            serial=serial,
            root_seed=_seed(material.get("root"), "mldsa87_seed", "root"),
            versions=versions,
        )

    def to_material(self) -> dict[str, Any]:
        """The v2 contents to seal into the keystore file."""
        with self.lock:
            sections: dict[str, dict[str, str]] = {s: {} for s in _SECTIONS.values()}
            for v in self._versions:
                for name, value in v.seeds.unsafe_key().items():
                    sections[_SECTIONS[v.purpose]][f"v{v.version}/{name}"] = b64encode(value)
            return {
                "format": MATERIAL_FORMAT,
                "origin": self.origin,
                "policy": self.policy.value,
                "serial": self.serial,
                "root": {"mldsa87_seed": b64encode(self._root_seed.unsafe_key())},
                **sections,
                "versions": [
                    {
                        "purpose": v.purpose.value,
                        "version": v.version,
                        "suite": v.suite,
                        "state": v.state.value,
                        "created_at": v.created_at,
                    }
                    for v in self._versions
                ],
            }

    # -- queries -----------------------------------------------------------------------------

    def versions(self) -> list[KeyVersion]:
        """Every version, by purpose then version."""
        with self.lock:
            return sorted(self._versions, key=lambda v: (v.purpose.value, v.version))

    def primary(self, purpose: Purpose) -> KeyVersion:
        """The primary version of ``purpose``."""
        with self.lock:
            return next(
                v for v in self._versions if v.purpose == purpose and v.state == KeyState.PRIMARY
            )

    def checkpoint_signers(self) -> tuple[NoteSigner, ...]:
        """Who signs checkpoints: the primary version, then every enabled (not retired) one.

        Signing with the old and the new version during a rollover keeps clients and witnesses
        that pin either working; retiring the old version ends the rollover.
        """
        with self.lock:
            live = [
                v
                for v in self._versions
                if v.purpose == Purpose.CHECKPOINT_SIGNING and v.state != KeyState.RETIRED
            ]
        live.sort(key=lambda v: (v.state != KeyState.PRIMARY, -v.version))
        return tuple(s for v in live for s in v.note_signers(self.origin))

    def checkpoint_key_sets(self) -> tuple[tuple[NoteVerifier, ...], ...]:
        """Every checkpoint key version's verifiers, retired ones too: history stays checkable."""
        return tuple(
            tuple(s.verifier() for s in v.note_signers(self.origin))
            for v in self.versions()
            if v.purpose == Purpose.CHECKPOINT_SIGNING
        )

    def find(self, key_id: str) -> KeyVersion:
        """The version with ``key_id``; ``UnknownKeyError`` if this core never held it."""
        with self.lock:
            for v in self._versions:
                if v.key_id == key_id:
                    return v
        raise UnknownKeyError(f"key {key_id} is not in this core's key manifest")

    def require_usable(self, key_id: str, *, purpose: Purpose, use: str) -> KeyVersion:
        """The version with ``key_id`` if it may be used for ``use``; retired keys refuse."""
        version = self.find(key_id)
        if version.purpose != purpose:
            raise UnknownKeyError(f"key {key_id} is a {version.purpose} key, not {purpose}")
        if version.state == KeyState.RETIRED:
            raise UnknownKeyError(
                f"key {key_id} ({version.purpose} v{version.version}) is retired; "
                f"retired keys refuse new use, so {use} is refused"
            )
        suite_policy(self.policy).require_readable(version.suite, what=f"key {key_id}")
        return version

    def hpke_handles(self) -> dict[str, KeyHandle[HPKEPrivateKey]]:
        """HPKE private keys of every version that may still open (primary and enabled)."""
        return {
            v.key_id: v.hpke_handle()
            for v in self.versions()
            if v.purpose == Purpose.HPKE_UNWRAP and v.state != KeyState.RETIRED
        }

    def manifest(self) -> KeyManifest:
        """The manifest body for the current state (unsigned)."""
        with self.lock:
            return KeyManifest(
                origin=self.origin,
                policy=self.policy,
                serial=self.serial,
                root_public=self._root.unsafe_key().public_key().public_bytes_raw(),
                keys=tuple(v.record() for v in self.versions()),
            )

    def sign_manifest(self, manifest: KeyManifest) -> bytes:
        """The root key's ML-DSA-87 signature over ``manifest``."""
        from qward.crypto.manifest import MANIFEST_CONTEXT

        return self._root.unsafe_key().sign(manifest.signed_message(), MANIFEST_CONTEXT)

    # -- changes -----------------------------------------------------------------------------

    def rotate(self, purpose: Purpose) -> KeyVersion:
        """Make a new version of ``purpose`` primary under the current policy; the old primary
        stays enabled, so what it sealed or signed still opens and verifies."""
        rules = suite_policy(self.policy)
        # Checkpoints keep the C2SP note suite (Ed25519 and ML-DSA-44) under every policy.
        suite = {
            Purpose.HPKE_UNWRAP: rules.kem_suite,
            Purpose.RECEIPT_SIGNING: _receipt_suite(rules.signature_suite, self.policy),
            Purpose.CHECKPOINT_SIGNING: NOTE_ED25519_MLDSA44,
        }[purpose]
        with self.lock:
            old = self.primary(purpose)
            number = 1 + max(v.version for v in self._versions if v.purpose == purpose)
            new = _version(
                purpose, number, suite, KeyState.PRIMARY, self._clock(), _fresh_seeds(suite)
            )
            old.state = KeyState.ENABLED
            self._versions.append(new)
            self.serial += 1
            return new

    def retire(self, key_id: str) -> KeyVersion:
        """Retire a non-primary version: its private key refuses any further use."""
        with self.lock:
            version = self.find(key_id)
            if version.state == KeyState.PRIMARY:
                raise InputError(
                    f"key {key_id} is the primary {version.purpose} key; rotate first, "
                    "then retire it"
                )
            if version.state == KeyState.RETIRED:
                raise InputError(f"key {key_id} is already retired")
            version.state = KeyState.RETIRED
            self.serial += 1
            return version

    def set_policy(self, policy: Policy) -> list[KeyVersion]:
        """Switch to ``policy``, rotating every purpose whose primary it does not accept."""
        rules = suite_policy(policy)
        with self.lock:
            _receipt_suite(rules.signature_suite, policy)
            if policy == self.policy:
                return []
            self.policy = policy
            self.serial += 1
            rotated = []
            for purpose in (Purpose.HPKE_UNWRAP, Purpose.RECEIPT_SIGNING):
                if self.primary(purpose).suite not in rules.accepted:
                    rotated.append(self.rotate(purpose))
            return rotated


def _receipt_suite(suite: str, policy: Policy) -> str:
    if suite not in SIGNATURE_LAYOUT:
        raise CryptoError(
            f"policy {policy.value!r} needs {suite} receipt signatures, which qward receipts "
            f"cannot carry; the policy is unchanged"
        )
    return suite


def _origin(material: dict[str, Any]) -> str:
    origin = material.get("origin")
    if not isinstance(origin, str) or not origin:
        raise KeystoreError("keystore is damaged: no log origin")
    return origin


def _seed(section: object, name: str, where: str) -> bytes:
    if not isinstance(section, dict):
        raise KeystoreError(f"keystore is damaged: section {where} is missing")
    try:
        return b64decode(section.get(name), what=f"keystore {name}")
    except FormatError:
        raise KeystoreError(f"keystore is damaged: {where} {name} is unreadable") from None


def _load_version(material: dict[str, Any], meta: dict[str, Any]) -> KeyVersion:
    purpose, version, suite = Purpose(meta["purpose"]), meta["version"], meta["suite"]
    if (
        not isinstance(version, int)
        or suite not in _SEEDS
        or not isinstance(meta["created_at"], str)
    ):
        raise ValueError("bad version metadata")
    section = material.get(_SECTIONS[purpose])
    seeds = {n: _seed(section, f"v{version}/{n}", _SECTIONS[purpose]) for n, _ in _SEEDS[suite]}
    if any(len(seeds[n]) != length for n, length in _SEEDS[suite]):
        raise ValueError("bad seed length")
    return _version(purpose, version, suite, KeyState(meta["state"]), meta["created_at"], seeds)
