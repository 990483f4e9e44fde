"""The witness's own cosigning keys, in a private file in its state directory.

The file (``qward.tlog.seed_file``) holds seeds only, created with mode 0600 and never
overwritten. A witness that loses its keys is a new witness: clients pin these keys.
"""

from __future__ import annotations

import time
from pathlib import Path

from qward.tlog.note import Ed25519CosignatureSigner, MLDSA44NoteSigner, NoteSigner
from qward.tlog.seed_file import SeedKeys, create_seed_file, load_seed_file

__all__ = ["create_witness_keys", "load_witness_keys"]

_FILE = "witness-keys.json"
_FORMAT = "qward/witness-keys/v1"
_WHAT = "witness keys"


def _now() -> int:
    return int(time.time())


def create_witness_keys(state_dir: Path, *, name: str) -> tuple[NoteSigner, ...]:
    """Generate the witness's keys under ``name``; refuses to replace existing ones."""
    keys = create_seed_file(state_dir / _FILE, file_format=_FORMAT, name=name, what=_WHAT)
    return _signers(keys)


def load_witness_keys(state_dir: Path) -> tuple[NoteSigner, ...]:
    """The witness's signers from ``state_dir``; a missing or damaged file is a KeystoreError."""
    keys = load_seed_file(
        state_dir / _FILE, file_format=_FORMAT, what=_WHAT, hint="run `qward witness init` first"
    )
    return _signers(keys)


def _signers(keys: SeedKeys) -> tuple[NoteSigner, ...]:
    return (
        Ed25519CosignatureSigner(name=keys.name, private_key=keys.ed25519, clock=_now),
        MLDSA44NoteSigner(name=keys.name, private_key=keys.mldsa44, clock=_now),
    )
