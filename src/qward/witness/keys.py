"""The witness's own cosigning keys, in a private file in its state directory.

The file holds seeds only (Ed25519 private bytes and an ML-DSA-44 seed), created with mode 0600
and never overwritten. A witness that loses its keys is a new witness: clients pin these keys.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json, read_limited
from qward.errors import FormatError, KeystoreError
from qward.tlog.note import Ed25519CosignatureSigner, MLDSA44NoteSigner, NoteSigner

__all__ = ["create_witness_keys", "load_witness_keys"]

_FILE = "witness-keys.json"
_FORMAT = "qward/witness-keys/v1"


def _now() -> int:
    return int(time.time())


def create_witness_keys(state_dir: Path, *, name: str) -> tuple[NoteSigner, ...]:
    """Generate the witness's keys under ``name``; refuses to replace existing ones."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {
        "format": _FORMAT,
        "name": name,
        "ed25519": b64encode(secrets.token_bytes(32)),
        "mldsa44_seed": b64encode(secrets.token_bytes(32)),
    }
    signers = _signers(doc)  # validates the name before anything is written
    try:
        fd = os.open(state_dir / _FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"witness keys already exist in {state_dir}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(canonical_json(doc))
        handle.flush()
        os.fsync(handle.fileno())
    return signers


def load_witness_keys(state_dir: Path) -> tuple[NoteSigner, ...]:
    """The witness's signers from ``state_dir``; a missing or damaged file is a KeystoreError."""
    path = state_dir / _FILE
    if not path.exists():
        raise KeystoreError(f"no witness keys in {state_dir}: run `qward witness init` first")
    try:
        raw = read_limited(str(path), limit=4096, what="witness keys")
        doc = parse_canonical_json(raw, what="witness keys")
        if doc.get("format") != _FORMAT:
            raise FormatError(f"format {doc.get('format')!r} is not {_FORMAT}")
        return _signers(doc)
    except (FormatError, ValueError) as exc:
        raise KeystoreError(f"witness keys in {state_dir} are damaged: {exc}") from None


def _signers(doc: Mapping[str, object]) -> tuple[NoteSigner, ...]:
    name = doc.get("name")
    if not isinstance(name, str):
        raise FormatError("the witness name is missing")
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(b64decode(doc.get("ed25519"), what="key"))
    ml = mldsa.MLDSA44PrivateKey.from_seed_bytes(b64decode(doc.get("mldsa44_seed"), what="key"))
    return (
        Ed25519CosignatureSigner(name=name, private_key=ed, clock=_now),
        MLDSA44NoteSigner(name=name, private_key=ml, clock=_now),
    )
