"""Fixtures for key-management tests: a core service on a temporary state directory, and a
writer for the v1 keystore format as qward wrote it before key versions existed."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from qward.encoding import b64encode, canonical_json
from qward.protected.auditor import Auditor
from qward.protected.keystore import create_keystore
from qward.protected.models import ModelRegistry
from qward.protected.service import CoreService
from qward.receipts.receipt import ReceiptSigning
from qward.tlog.store import SQLiteLogStore


def _raw(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def write_v1_keystore(state_dir: Path, *, origin: str) -> None:
    """A keyfile-protected ``qward/keystore/v1`` file, byte for byte as ``create_keystore``
    wrote it at commit 91ea5ef (before key versions): same KEK derivation, AAD and layout."""
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    (state_dir / "keystore.key").write_bytes(secret)
    (state_dir / "keystore.key").chmod(0o600)
    material = {
        "origin": origin,
        "hpke": {
            "mlkem768_seed": b64encode(secrets.token_bytes(64)),
            "x25519": b64encode(_raw(x25519.X25519PrivateKey.generate())),
        },
        "receipt": {
            "mldsa65_seed": b64encode(secrets.token_bytes(32)),
            "ed25519": b64encode(_raw(ed25519.Ed25519PrivateKey.generate())),
        },
        "log": {
            "mldsa44_seed": b64encode(secrets.token_bytes(32)),
            "ed25519": b64encode(_raw(ed25519.Ed25519PrivateKey.generate())),
        },
    }
    protection = {"kind": "keyfile"}
    kek = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"qward/keystore/v1/kek"
    ).derive(secret)
    nonce = secrets.token_bytes(12)
    aad = canonical_json({"format": "qward/keystore/v1", "protection": protection})
    sealed = AESGCM(kek).encrypt(nonce, canonical_json(material), aad)
    (state_dir / "keystore.json").write_bytes(
        canonical_json(
            {
                "format": "qward/keystore/v1",
                "protection": protection,
                "nonce": b64encode(nonce),
                "ciphertext": b64encode(sealed),
            }
        )
    )


def make_service(
    state_dir: Path, *, receipt_signing: ReceiptSigning = ReceiptSigning.CHECKPOINT
) -> CoreService:
    keys = create_keystore(state_dir, origin="keys.test/log")
    store = SQLiteLogStore.open(state_dir / "log.sqlite")
    auditor = Auditor(store=store, origin=keys.origin, signers=keys.log_signers)
    return CoreService(
        keys=keys,
        auditor=auditor,
        registry=ModelRegistry(state_dir / "models"),
        receipt_signing=receipt_signing,
    )


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[CoreService]:
    svc = make_service(tmp_path / "state")
    yield svc
    svc._models.close()


def log_entries(state_dir: Path) -> list[bytes]:
    """Every entry of the core's log, read straight from SQLite."""
    import sqlite3

    with sqlite3.connect(state_dir / "log.sqlite") as db:
        return [bytes(d) for (d,) in db.execute("SELECT data FROM entries ORDER BY idx")]
