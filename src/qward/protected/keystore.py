"""The embedded file keystore.

All of the core's private keys live in one file, ``keystore.json``, sealed with AES-256-GCM under a
key-encryption key. The KEK comes either from a passphrase (scrypt) given in the environment
variable ``QWARD_KEYSTORE_PASSPHRASE``, or from a 32-byte key file beside the keystore created with
mode 0600 (the default, so that ``qward demo`` works unattended). With protection ``pkcs11`` the
contents are instead sealed inside a PKCS#11 token by a non-extractable key (``pkcs11_kek``), named
in the file's protection header. Keys are stored as seeds, so the file is small and the public
halves are recomputed on load.

Format ``qward/keystore/v2`` holds a ``KeyRing``: the ML-DSA-87 root key and every version of every
purpose's key with its state. A ``qward/keystore/v1`` file (one key per purpose) still loads: it is
migrated on load to v2 with the same keys as primary version 1 and rewritten in place, atomically.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from qward.crypto.keys import HPKERecipientKey
from qward.crypto.manifest import Purpose
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json, read_limited
from qward.errors import FormatError, KeystoreError
from qward.protected.handles import HPKEPrivateKey, KeyHandle
from qward.protected.keyring import KeyRing
from qward.protected.log_identity import LogIdentity
from qward.protected.pkcs11_kek import TokenConfig, TokenKEK, read_secret_file
from qward.protected.signing import ReceiptSigner
from qward.suites import DEFAULT_POLICY, Policy
from qward.tlog.note import NoteSigner

__all__ = [
    "FORMAT_V1",
    "FORMAT_V2",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "PROTECTION_ENV",
    "CoreKeys",
    "create_keystore",
    "load_keystore",
    "passphrase_from_environment",
]

PASSPHRASE_ENV = "QWARD_KEYSTORE_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
#: A file holding the passphrase, readable only by the core's user; used when the variable is unset.
PASSPHRASE_FILE_ENV = "QWARD_KEYSTORE_PASSPHRASE_FILE"  # noqa: S105 - a variable name
#: How the core protects a keystore it creates: "file" (passphrase or key file) or "pkcs11".
PROTECTION_ENV = "QWARD_KEYSTORE_PROTECTION"
FORMAT_V1 = "qward/keystore/v1"
FORMAT_V2 = "qward/keystore/v2"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_MAX_KEYSTORE = 1024 * 1024


class _KEK(Protocol):
    """Seals and opens the keystore contents with AES-256-GCM; ``decrypt`` raises KeystoreError."""

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes: ...


class _FileKEK:
    """A KEK held in this process (derived from a passphrase or the key file)."""

    def __init__(self, key: bytes) -> None:
        self._key = KeyHandle(purpose="keystore-kek", key_id="keystore", key=key)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return AESGCM(self._key.unsafe_key()).encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(self._key.unsafe_key()).decrypt(nonce, data, aad)
        except (InvalidTag, ValueError):
            raise KeystoreError(
                "keystore does not open: wrong passphrase or key file, or damaged"
            ) from None


@dataclass(frozen=True, kw_only=True)
class _KeystoreFile:
    """Where the keystore lives and the KEK that seals it, for writing it back after a change."""

    path: Path
    protection: dict[str, Any]
    kek: _KEK

    def write(self, ring: KeyRing) -> None:
        """Seal ``ring`` and replace the file atomically (write beside it, fsync, rename)."""
        nonce = secrets.token_bytes(12)
        aad = canonical_json({"format": FORMAT_V2, "protection": self.protection})
        sealed = self.kek.encrypt(nonce, canonical_json(ring.to_material()), aad)
        doc = {
            "format": FORMAT_V2,
            "protection": self.protection,
            "nonce": b64encode(nonce),
            "ciphertext": b64encode(sealed),
        }
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        try:
            _write_private(partial, canonical_json(doc))
            os.replace(partial, self.path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


class CoreKeys:
    """Every key the core holds, as a live view of its ``KeyRing``: after a rotation the
    properties name the new primary keys."""

    def __init__(
        self, *, ring: KeyRing, keystore: _KeystoreFile | None = None, migrated_from: str = ""
    ) -> None:
        self.ring = ring
        self._keystore = keystore
        #: The format this keystore was migrated from on load ("" if it was not).
        self.migrated_from = migrated_from
        #: The log identity shared with other cores of one log, if this core is one of several.
        self.log_identity: LogIdentity | None = None

    @property
    def origin(self) -> str:
        """The transparency log's origin line (the shared log's, if there is one)."""
        if self.log_identity is not None:
            return self.log_identity.origin
        return self.ring.origin

    @property
    def hpke(self) -> dict[str, KeyHandle[HPKEPrivateKey]]:
        """HPKE private keys that may still open, by key id (primary and enabled versions)."""
        return self.ring.hpke_handles()

    @property
    def hpke_public(self) -> HPKERecipientKey:
        """The primary KEK's public key: where new seals go."""
        return self.ring.primary(Purpose.HPKE_UNWRAP).recipient()

    @property
    def receipt_signer(self) -> ReceiptSigner:
        """The primary receipt signer."""
        return self.ring.primary(Purpose.RECEIPT_SIGNING).receipt_signer()

    @property
    def log_signers(self) -> tuple[NoteSigner, ...]:
        """The checkpoint signers: the shared log's, or else the primary version's, then every
        enabled older version's."""
        if self.log_identity is not None:
            return self.log_identity.signers
        return self.ring.checkpoint_signers()

    @property
    def protection(self) -> str:
        """How the keystore file is protected: "keyfile", "scrypt" or "pkcs11" ("" if none)."""
        return str(self._keystore.protection.get("kind", "")) if self._keystore else ""

    @property
    def state_dir(self) -> Path | None:
        """The directory holding the keystore file (None for an in-memory ring)."""
        return self._keystore.path.parent if self._keystore else None

    def save(self) -> None:
        """Write the ring back to the keystore file (after a rotation, retirement, ...)."""
        if self._keystore is None:
            raise KeystoreError("these keys have no keystore file to save to")
        self._keystore.write(self.ring)

    def __repr__(self) -> str:
        return f"CoreKeys(origin={self.origin!r}, policy={self.ring.policy.value!r})"


def _kek(
    state_dir: Path, protection: dict[str, Any], passphrase: str | None, token: TokenConfig | None
) -> _KEK:
    if protection.get("kind") == "pkcs11":
        return TokenKEK.from_protection(protection, token or TokenConfig.from_env())
    return _FileKEK(_file_kek(state_dir, protection, passphrase))


def _file_kek(state_dir: Path, protection: dict[str, Any], passphrase: str | None) -> bytes:
    if protection.get("kind") == "scrypt":
        if not passphrase:
            raise KeystoreError(f"keystore is passphrase-protected: set {PASSPHRASE_ENV}")
        salt = b64decode(protection.get("salt"), what="keystore salt")
        return Scrypt(
            salt=salt,
            length=32,
            n=int(protection["n"]),
            r=int(protection["r"]),
            p=int(protection["p"]),
        ).derive(passphrase.encode("utf-8"))
    if protection.get("kind") == "keyfile":
        key_file = state_dir / "keystore.key"
        secret = read_limited(str(key_file), limit=64, what="keystore key file")
        if len(secret) != 32:
            raise KeystoreError("keystore key file is damaged (expected 32 bytes)")
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"qward/keystore/v1/kek"
        ).derive(secret)
    raise KeystoreError(f"keystore protection {protection.get('kind')!r} is not supported")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _protection(state_dir: Path, passphrase: str | None) -> dict[str, Any]:
    if passphrase:
        return {"kind": "scrypt", "salt": b64encode(secrets.token_bytes(16)), **_SCRYPT}
    _write_private(state_dir / "keystore.key", secrets.token_bytes(32))
    return {"kind": "keyfile"}


def create_keystore(
    state_dir: Path,
    *,
    origin: str,
    passphrase: str | None = None,
    policy: Policy = DEFAULT_POLICY,
    protection: Literal["file", "pkcs11"] = "file",
    token: TokenConfig | None = None,
) -> CoreKeys:
    """Generate a root key and version 1 of every key, and write the sealed keystore (v2);
    refuses to overwrite one.

    ``protection="file"`` seals under a passphrase (if given) or a new key file;
    ``protection="pkcs11"`` generates a non-extractable KEK in the token ``token`` names (by
    default from ``QWARD_PKCS11_MODULE``, ``QWARD_PKCS11_TOKEN`` and ``QWARD_PKCS11_PIN``).
    """
    if protection not in ("file", "pkcs11"):
        raise KeystoreError(f"keystore protection {protection!r} is not 'file' or 'pkcs11'")
    if protection == "pkcs11" and passphrase:
        raise KeystoreError("a passphrase does not apply to a pkcs11-protected keystore")
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / "keystore.json"
    if path.exists():
        raise KeystoreError(f"a keystore already exists at {path}")
    ring = KeyRing.generate(origin=origin, policy=policy)
    kek: _KEK
    if protection == "pkcs11":
        token_kek = TokenKEK.generate(token or TokenConfig.from_env())
        header, kek = token_kek.protection, token_kek
    else:
        header = _protection(state_dir, passphrase)
        kek = _kek(state_dir, header, passphrase, None)
    keystore = _KeystoreFile(path=path, protection=header, kek=kek)
    keystore.write(ring)
    return CoreKeys(ring=ring, keystore=keystore)


def passphrase_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The keystore passphrase from ``QWARD_KEYSTORE_PASSPHRASE`` or, failing that, the file
    named by ``QWARD_KEYSTORE_PASSPHRASE_FILE``; ``None`` when neither is set."""
    env = os.environ if environ is None else environ
    if env.get(PASSPHRASE_ENV):
        return env[PASSPHRASE_ENV]
    if env.get(PASSPHRASE_FILE_ENV):
        return read_secret_file(env[PASSPHRASE_FILE_ENV], what="keystore passphrase file")
    return None


def load_keystore(
    state_dir: Path, *, passphrase: str | None = None, token: TokenConfig | None = None
) -> CoreKeys:
    """Open the keystore in ``state_dir``; a wrong passphrase or damaged file is a KeystoreError.

    The protection header picks the KEK; a pkcs11 one is opened with ``token`` (by default the
    ``QWARD_PKCS11_*`` environment).

    A v1 keystore is migrated: its keys become primary version 1 of a v2 ring with a new root
    key, and the file is rewritten as v2 (sealed under the same KEK).
    """
    path = state_dir / "keystore.json"
    if not path.exists():
        raise KeystoreError(f"no keystore at {path}")
    try:
        doc = parse_canonical_json(
            read_limited(str(path), limit=_MAX_KEYSTORE, what="keystore"), what="keystore"
        )
        version = doc.get("format")
        if version not in (FORMAT_V1, FORMAT_V2) or not isinstance(doc.get("protection"), dict):
            raise KeystoreError(f"keystore format {version!r} is not supported")
        protection = doc["protection"]
        nonce = b64decode(doc.get("nonce"), what="keystore nonce")
        sealed = b64decode(doc.get("ciphertext"), what="keystore ciphertext")
    except FormatError as exc:
        raise KeystoreError(f"keystore is damaged: {exc}") from None
    kek = _kek(state_dir, protection, passphrase, token)
    aad = canonical_json({"format": version, "protection": protection})
    plain = kek.decrypt(nonce, sealed, aad)
    try:
        material = parse_canonical_json(plain, what="keystore contents")
    except FormatError as exc:
        raise KeystoreError(f"keystore is damaged: {exc}") from None
    keystore = _KeystoreFile(path=path, protection=protection, kek=kek)
    if version == FORMAT_V2:
        return CoreKeys(ring=KeyRing.from_material(material), keystore=keystore)
    ring = KeyRing.from_v1_material(material, at="migrated-from-v1")
    keystore.write(ring)
    return CoreKeys(ring=ring, keystore=keystore, migrated_from=FORMAT_V1)
