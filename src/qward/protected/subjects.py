"""Per-data-subject keys, held only by the core; deleting one erases that subject's log fields.

WARNING: this module holds secret keys. Only the protected core imports it.

Subjects are never stored by name: a subject's key id is an HMAC of its identifier under a secret
of this core (``subjects.secret``, 32 bytes, mode 0600), so neither the log nor this store lists
who the subjects are. Keys live in ``subjects.sqlite`` (mode 0600), each wrapped with AES-256-GCM
under a key derived from the same secret. SQLite runs with ``secure_delete`` and a rollback journal,
so a deleted key's bytes are overwritten in the database file rather than left in a free page or a
write-ahead log. What deletion cannot reach is said in docs/eu-ai-act-records.md (backups, copies
made outside qward).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qward.errors import KeystoreError, NotFoundError

__all__ = ["SUBJECT_DATABASE", "SUBJECT_SECRET", "SubjectKeys"]

SUBJECT_DATABASE = "subjects.sqlite"
SUBJECT_SECRET = "subjects.secret"  # noqa: S105 - a file name
_SCHEMA = "CREATE TABLE IF NOT EXISTS subject_keys (key_id TEXT PRIMARY KEY, wrapped BLOB NOT NULL)"


def _secret(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) != 32:
            raise KeystoreError(f"{path} must hold 32 bytes") from None
        return data
    data = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return data


class SubjectKeys:
    """Subject keys in ``state_dir``: created on first use, deleted on erasure."""

    def __init__(self, state_dir: Path) -> None:
        secret = _secret(state_dir / SUBJECT_SECRET)
        self._pseudonym_key = hmac.new(secret, b"qward/subject-id/v1", hashlib.sha256).digest()
        self._wrap = AESGCM(
            HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"qward/subject-wrap/v1"
            ).derive(secret)
        )
        path = state_dir / SUBJECT_DATABASE
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute("PRAGMA journal_mode = DELETE")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def key_id(self, subject: str) -> str:
        """The pseudonymous key id of ``subject`` (the same for the life of this core's state)."""
        mac = hmac.new(self._pseudonym_key, subject.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:32]

    def key_for(self, subject: str) -> tuple[str, bytes]:
        """``subject``'s key id and key, made on first use."""
        key_id = self.key_id(subject)
        with self._lock:
            key = self._get(key_id)
            if key is None:
                key = secrets.token_bytes(32)
                nonce = secrets.token_bytes(12)
                wrapped = nonce + self._wrap.encrypt(nonce, key, key_id.encode())
                self._db.execute("INSERT INTO subject_keys VALUES (?, ?)", (key_id, wrapped))
        return key_id, key

    def get(self, key_id: str) -> bytes | None:
        """The key with this id, or ``None`` once it has been erased (or never existed)."""
        with self._lock:
            return self._get(key_id)

    def _get(self, key_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT wrapped FROM subject_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        if row is None:
            return None
        wrapped = bytes(row[0])
        return self._wrap.decrypt(wrapped[:12], wrapped[12:], key_id.encode())

    def erase(self, subject: str) -> str:
        """Delete ``subject``'s key for good; returns its key id. ``NotFoundError`` if this core
        holds no key for it (never seen, or already erased)."""
        key_id = self.key_id(subject)
        with self._lock:
            deleted = self._db.execute(
                "DELETE FROM subject_keys WHERE key_id = ?", (key_id,)
            ).rowcount
            # Rewrites the file without free pages: nothing of the key is left to carve out.
            self._db.execute("VACUUM")
        if not deleted:
            raise NotFoundError("no key is held for that subject (never seen, or already erased)")
        return key_id

    def close(self) -> None:
        """Close the database."""
        self._db.close()
