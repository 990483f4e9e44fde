"""A note signer's private seeds in a file: created once with mode 0600, never overwritten.

The file holds a name, Ed25519 private bytes and an ML-DSA-44 seed, in canonical JSON under a
format label of the caller's. A witness and a release log each keep their keys this way; a lost
file is a new identity, because clients pin the public keys.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json, read_limited
from qward.errors import FormatError, KeystoreError

__all__ = ["SeedKeys", "create_seed_file", "load_seed_file"]


@dataclass(frozen=True)
class SeedKeys:
    """The keys a seed file holds. Not printable: the repr names the key only."""

    name: str
    ed25519: ed25519.Ed25519PrivateKey
    mldsa44: mldsa.MLDSA44PrivateKey

    def __repr__(self) -> str:
        return f"SeedKeys(name={self.name!r}, <private keys redacted>)"


def create_seed_file(path: Path, *, file_format: str, name: str, what: str) -> SeedKeys:
    """Generate keys for ``name`` into ``path``; refuses to replace an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {
        "format": file_format,
        "name": name,
        "ed25519": b64encode(secrets.token_bytes(32)),
        "mldsa44_seed": b64encode(secrets.token_bytes(32)),
    }
    keys = _keys(doc)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{what} already exist in {path.parent}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(canonical_json(doc))
        handle.flush()
        os.fsync(handle.fileno())
    return keys


def load_seed_file(path: Path, *, file_format: str, what: str, hint: str) -> SeedKeys:
    """The keys in ``path``; a missing or damaged file is a ``KeystoreError``."""
    if not path.exists():
        raise KeystoreError(f"no {what} in {path.parent}: {hint}")
    try:
        doc = parse_canonical_json(read_limited(str(path), limit=4096, what=what), what=what)
        if doc.get("format") != file_format:
            raise FormatError(f"format {doc.get('format')!r} is not {file_format}")
        return _keys(doc)
    except (FormatError, ValueError) as exc:
        raise KeystoreError(f"{what} in {path.parent} are damaged: {exc}") from None


def _keys(doc: Mapping[str, object]) -> SeedKeys:
    name = doc.get("name")
    if not isinstance(name, str):
        raise FormatError("the key name is missing")
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(b64decode(doc.get("ed25519"), what="key"))
    ml = mldsa.MLDSA44PrivateKey.from_seed_bytes(b64decode(doc.get("mldsa44_seed"), what="key"))
    return SeedKeys(name=name, ed25519=ed, mldsa44=ml)
