"""The embedded file keystore.

All of the core's private keys live in one file, ``keystore.json``, sealed with AES-256-GCM under a
key-encryption key. The KEK comes either from a passphrase (scrypt) given in the environment
variable ``QWARD_KEYSTORE_PASSPHRASE``, or from a 32-byte key file beside the keystore created with
mode 0600 (the default, so that ``qward demo`` works unattended). Keys are stored as seeds, so the
file is small and the public halves are recomputed on load.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from qward.crypto.keys import HPKERecipientKey
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json, read_limited
from qward.errors import FormatError, KeystoreError
from qward.protected.handles import KeyHandle
from qward.protected.signing import HybridSigner
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner, NoteSigner

__all__ = ["PASSPHRASE_ENV", "CoreKeys", "create_keystore", "load_keystore"]

PASSPHRASE_ENV = "QWARD_KEYSTORE_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
_FORMAT = "qward/keystore/v1"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_MAX_KEYSTORE = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class CoreKeys:
    """Every key the core holds, each behind a handle or a signer object."""

    origin: str
    hpke: dict[str, KeyHandle[hpke.MLKEM768X25519PrivateKey]]
    hpke_public: HPKERecipientKey
    receipt_signer: HybridSigner
    log_signers: tuple[NoteSigner, ...]


def _raw_private(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _fresh_material(origin: str) -> dict[str, Any]:
    return {
        "origin": origin,
        "hpke": {
            "mlkem768_seed": b64encode(secrets.token_bytes(64)),
            "x25519": b64encode(_raw_private(x25519.X25519PrivateKey.generate())),
        },
        "receipt": {
            "mldsa65_seed": b64encode(secrets.token_bytes(32)),
            "ed25519": b64encode(_raw_private(ed25519.Ed25519PrivateKey.generate())),
        },
        "log": {
            "mldsa44_seed": b64encode(secrets.token_bytes(32)),
            "ed25519": b64encode(_raw_private(ed25519.Ed25519PrivateKey.generate())),
        },
    }


def _seed(section: Any, name: str) -> bytes:
    if not isinstance(section, dict):
        raise KeystoreError("keystore is damaged: a key section is missing")
    try:
        return b64decode(section.get(name), what=f"keystore {name}")
    except FormatError:
        raise KeystoreError(f"keystore is damaged: {name} is unreadable") from None


def _keys_from_material(material: dict[str, Any]) -> CoreKeys:
    origin = material.get("origin")
    if not isinstance(origin, str) or not origin:
        raise KeystoreError("keystore is damaged: no log origin")
    h, r, lg = material.get("hpke"), material.get("receipt"), material.get("log")
    try:
        kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(_seed(h, "mlkem768_seed"))
        xkey = x25519.X25519PrivateKey.from_private_bytes(_seed(h, "x25519"))
        signer = HybridSigner(
            mldsa_key=mldsa.MLDSA65PrivateKey.from_seed_bytes(_seed(r, "mldsa65_seed")),
            ed_key=ed25519.Ed25519PrivateKey.from_private_bytes(_seed(r, "ed25519")),
        )
        log_signers: tuple[NoteSigner, ...] = (
            Ed25519NoteSigner(
                name=origin,
                private_key=ed25519.Ed25519PrivateKey.from_private_bytes(_seed(lg, "ed25519")),
            ),
            MLDSA44NoteSigner(
                name=origin,
                private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(_seed(lg, "mldsa44_seed")),
            ),
        )
    except ValueError:
        raise KeystoreError("keystore is damaged: a key does not load") from None
    public = HPKERecipientKey.from_hpke_parts(kem.public_key(), xkey.public_key())
    handle = KeyHandle(
        purpose="unseal", key_id=public.key_id, key=hpke.MLKEM768X25519PrivateKey(kem, xkey)
    )
    return CoreKeys(
        origin=origin,
        hpke={public.key_id: handle},
        hpke_public=public,
        receipt_signer=signer,
        log_signers=log_signers,
    )


def _kek(state_dir: Path, protection: dict[str, Any], passphrase: str | None) -> bytes:
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


def create_keystore(state_dir: Path, *, origin: str, passphrase: str | None = None) -> CoreKeys:
    """Generate every core key and write the sealed keystore; refuses to overwrite one."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / "keystore.json"
    if path.exists():
        raise KeystoreError(f"a keystore already exists at {path}")
    if passphrase:
        protection: dict[str, Any] = {
            "kind": "scrypt",
            "salt": b64encode(secrets.token_bytes(16)),
            **_SCRYPT,
        }
    else:
        protection = {"kind": "keyfile"}
        _write_private(state_dir / "keystore.key", secrets.token_bytes(32))
    material = _fresh_material(origin)
    nonce = secrets.token_bytes(12)
    aad = canonical_json({"format": _FORMAT, "protection": protection})
    sealed = AESGCM(_kek(state_dir, protection, passphrase)).encrypt(
        nonce, canonical_json(material), aad
    )
    _write_private(
        path,
        canonical_json(
            {
                "format": _FORMAT,
                "protection": protection,
                "nonce": b64encode(nonce),
                "ciphertext": b64encode(sealed),
            }
        ),
    )
    return _keys_from_material(material)


def load_keystore(state_dir: Path, *, passphrase: str | None = None) -> CoreKeys:
    """Open the keystore in ``state_dir``; a wrong passphrase or damaged file is a KeystoreError."""
    path = state_dir / "keystore.json"
    if not path.exists():
        raise KeystoreError(f"no keystore at {path}")
    try:
        doc = parse_canonical_json(
            read_limited(str(path), limit=_MAX_KEYSTORE, what="keystore"), what="keystore"
        )
        if doc.get("format") != _FORMAT or not isinstance(doc.get("protection"), dict):
            raise KeystoreError(f"keystore format {doc.get('format')!r} is not supported")
        protection = doc["protection"]
        nonce = b64decode(doc.get("nonce"), what="keystore nonce")
        sealed = b64decode(doc.get("ciphertext"), what="keystore ciphertext")
    except FormatError as exc:
        raise KeystoreError(f"keystore is damaged: {exc}") from None
    aad = canonical_json({"format": _FORMAT, "protection": protection})
    try:
        plain = AESGCM(_kek(state_dir, protection, passphrase)).decrypt(nonce, sealed, aad)
    except (InvalidTag, ValueError):
        raise KeystoreError(
            "keystore does not open: wrong passphrase or key file, or damaged"
        ) from None
    return _keys_from_material(parse_canonical_json(plain, what="keystore contents"))
