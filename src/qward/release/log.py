"""``ReleaseLog``: publish release entries to a transparency log and prove them to clients.

A release log is one directory: ``release-keys.json`` (Ed25519 and ML-DSA-44 checkpoint keys,
mode 0600) and ``release-log.db`` (the SQLite log). Each publish appends one entry, integrates and
signs a checkpoint with both keys in one go, so a statement handed out always verifies.
"""

from __future__ import annotations

import re
from pathlib import Path

from qward.attestation.release import ReleaseEntry, ReleaseStatement
from qward.encoding import parse_canonical_json
from qward.errors import InputError, NotFoundError
from qward.tlog.backend import note_checkpoint
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner, NoteSigner, NoteVerifier
from qward.tlog.seed_file import SeedKeys, create_seed_file, load_seed_file
from qward.tlog.store import SQLiteLogStore

__all__ = ["ReleaseLog"]

_KEYS = "release-keys.json"
_DB = "release-log.db"
_FORMAT = "qward/release-keys/v1"
_WHAT = "release log keys"
_ORIGIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_/]{0,127}$")


class ReleaseLog:
    """A release log in ``directory``; build it with ``create`` or ``open``."""

    def __init__(self, directory: Path, keys: SeedKeys) -> None:
        self.directory = directory
        self._signers: tuple[NoteSigner, ...] = (
            Ed25519NoteSigner(name=keys.name, private_key=keys.ed25519),
            MLDSA44NoteSigner(name=keys.name, private_key=keys.mldsa44),
        )
        self.origin = keys.name

    @classmethod
    def create(cls, directory: Path, *, origin: str) -> ReleaseLog:
        """A new release log named ``origin``; refuses a directory that already has one."""
        if not _ORIGIN.match(origin):
            raise InputError(f"release log origin {origin!r} must look like example.com/releases")
        keys = create_seed_file(directory / _KEYS, file_format=_FORMAT, name=origin, what=_WHAT)
        return cls(directory, keys)

    @classmethod
    def open(cls, directory: Path) -> ReleaseLog:
        """The release log in ``directory``."""
        keys = load_seed_file(
            directory / _KEYS,
            file_format=_FORMAT,
            what=_WHAT,
            hint="run `qward release init` first",
        )
        return cls(directory, keys)

    @property
    def verifiers(self) -> tuple[NoteVerifier, ...]:
        """The checkpoint keys clients pin (one key set: Ed25519 and ML-DSA-44)."""
        return tuple(s.verifier() for s in self._signers)

    def publish(self, entry: ReleaseEntry) -> ReleaseStatement:
        """Append ``entry``, sign a checkpoint covering it and return its statement."""
        # What clients will parse strictly is checked the same way before it is published.
        entry = ReleaseEntry.from_json(entry.to_json())
        with SQLiteLogStore.open(self.directory / _DB) as store:
            (index,) = store.sequence([entry.to_bytes()])
            note = store.publish(origin=self.origin, signers=self._signers, integrate=True)
            return self._statement(store, index, note)

    def statements(self) -> tuple[ReleaseStatement, ...]:
        """Every published release, each proved against the latest checkpoint."""
        with SQLiteLogStore.open(self.directory / _DB) as store:
            note = store.latest_checkpoint()
            if note is None:
                raise NotFoundError(f"release log {self.origin} has no release yet")
            size = note_checkpoint(note).size
            return tuple(self._statement(store, i, note) for i in range(size))

    @staticmethod
    def _statement(store: SQLiteLogStore, index: int, note: bytes) -> ReleaseStatement:
        checkpoint = note_checkpoint(note)
        return ReleaseStatement(
            entry=ReleaseEntry.from_json(
                parse_canonical_json(store.entry(index), what="release entry")
            ),
            index=index,
            inclusion_proof=store.inclusion_proof(index, checkpoint.size),
            checkpoint=note,
        )
