"""Durable transparency-log storage on SQLite, appended in Tessera's three phases.

1. ``sequence``: entries get consecutive indices and are committed, with their leaf hashes, in one
   transaction. Once it returns, the entries are durable; this is the point of acknowledgement.
2. ``integrate``: the hashes of every complete subtree the new leaves finish are computed and
   committed in one transaction, extending the tree to everything sequenced.
3. ``publish``: the integrated tree head is signed as a C2SP checkpoint and stored.

Tables: ``entries`` (index, entry bytes, leaf hash), ``nodes`` (level >= 1, index, hash of the
perfect subtree of ``2**level`` leaves at ``index * 2**level``, as in tlog tiles), ``checkpoints``
(signed notes in publication order) and ``meta`` (schema version, integrated size). The database
runs in WAL mode with ``synchronous=FULL`` so that a committed transaction survives power loss.
Every SQLite failure surfaces as ``AuditError`` naming what failed: the log fails closed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from qward.errors import AuditError, InputError, ProofError
from qward.tlog import merkle
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import NoteSigner, sign_note

__all__ = ["MAX_ENTRY_BYTES", "SQLiteLogStore"]

MAX_ENTRY_BYTES = 1024 * 1024
_SCHEMA_VERSION = 1
_BATCH = 512

# The entries table comes first and keeps the index as its first column: tools that inspect the
# database (and our end-to-end tests) find entry bytes without knowing the schema's names.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " idx INTEGER PRIMARY KEY, data BLOB NOT NULL, leaf_hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS nodes ("
    " level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,"
    " PRIMARY KEY (level, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS checkpoints ("
    " seq INTEGER PRIMARY KEY, signers TEXT NOT NULL, note BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta VALUES ('schema', 1)",
    "INSERT OR IGNORE INTO meta VALUES ('integrated_size', 0)",
)


def _note_checkpoint(note: bytes) -> Checkpoint:
    """The checkpoint in one of our own stored notes (its text ends at the last blank line)."""
    return Checkpoint.from_body(note[: note.rfind(b"\n\n") + 1])


def _signer_ids(signers: Sequence[NoteSigner]) -> str:
    return "\n".join(f"{s.name}+{s.key_id.hex()}+{s.algorithm:02x}" for s in signers)


class SQLiteLogStore:
    """A transparency log in one SQLite file. Build it with ``SQLiteLogStore.open``."""

    def __init__(self, *, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | Path) -> SQLiteLogStore:
        """Open (creating if needed) the log database at ``path``."""
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise AuditError(f"opening the log database {path} failed: {exc}") from None
        store = cls(connection=db)
        try:
            # The journal mode can only change outside a transaction.
            with store._guard(f"configuring the log database {path}"):
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                db.execute("PRAGMA synchronous=FULL")
            with store._transaction(f"creating the log schema in {path}"):
                for statement in _SCHEMA:
                    db.execute(statement)
                version = store._meta("schema")
            if mode not in ("wal", "memory") or version != _SCHEMA_VERSION:
                raise AuditError(f"log database {path}: journal mode {mode}, schema {version}")
        except BaseException:
            db.close()
            raise
        return store

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Hold the lock and turn SQLite failures into ``AuditError`` naming ``what``."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise AuditError(f"transparency log: {what} failed: {exc}") from None

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One write transaction; rolled back if anything inside raises."""
        with self._guard(what):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise AuditError(f"transparency log: metadata {key!r} is missing")
        return int(row[0])

    def _sequenced(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0])

    def _stored_node(self, level: int, index: int) -> bytes:
        if level == 0:
            row = self._db.execute("SELECT leaf_hash FROM entries WHERE idx = ?", (index,))
        else:
            row = self._db.execute(
                "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)
            )
        found = row.fetchone()
        if found is None:
            raise AuditError(f"transparency log: node ({level}, {index}) is missing")
        return bytes(found[0])

    # -- the three phases --------------------------------------------------------------------

    def sequence(self, entries: Sequence[bytes]) -> list[int]:
        """Durably append ``entries``; returns their indices once they are committed."""
        for entry in entries:
            if not isinstance(entry, bytes):
                raise AuditError("transparency log: entries must be bytes")
            if len(entry) > MAX_ENTRY_BYTES:
                raise AuditError(f"transparency log: entry over {MAX_ENTRY_BYTES} bytes refused")
        if not entries:
            return []
        with self._transaction(f"sequencing {len(entries)} entries"):
            first = self._sequenced()
            self._db.executemany(
                "INSERT INTO entries (idx, data, leaf_hash) VALUES (?, ?, ?)",
                [(first + i, e, merkle.leaf_hash(e)) for i, e in enumerate(entries)],
            )
        return list(range(first, first + len(entries)))

    def integrate(self) -> tuple[int, bytes]:
        """Store the subtree hashes the newly sequenced leaves complete; returns (size, root)."""
        with self._transaction("integrating sequenced entries"):
            old, new = self._meta("integrated_size"), self._sequenced()
            if old > new:
                raise AuditError(f"transparency log: integrated size {old} exceeds {new} entries")
            rows = self._new_nodes(old, new)
            self._db.executemany("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", rows)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'integrated_size'", (new,))
            root = merkle.root_from_node_getter(new, self._stored_node)
        return new, root

    def _new_nodes(self, old: int, new: int) -> list[tuple[int, int, bytes]]:
        """Every perfect subtree that is complete at size ``new`` but was not at size ``old``."""
        # Level 0 starts at the even index at or below ``old``, so the first new parent finds its
        # left child among the loaded leaves; higher levels fetch that one older child if needed.
        cursor = self._db.execute(
            "SELECT idx, leaf_hash FROM entries WHERE idx >= ? AND idx < ?", (old & ~1, new)
        )
        below: dict[int, bytes] = {int(i): bytes(h) for i, h in cursor}
        rows: list[tuple[int, int, bytes]] = []
        level = 1
        while (new >> level) > (old >> level):
            current: dict[int, bytes] = {}
            for i in range(old >> level, new >> level):
                left = below.get(2 * i)
                if left is None:
                    left = self._stored_node(level - 1, 2 * i)
                current[i] = merkle.node_hash(left, below[2 * i + 1])
                rows.append((level, i, current[i]))
            below, level = current, level + 1
        return rows

    def publish(self, *, origin: str, signers: Sequence[NoteSigner]) -> bytes:
        """Sign and store a checkpoint for the integrated tree; returns the signed note.

        1. Compute the root of the integrated tree from the stored nodes.
        2. If a checkpoint was published before, check it is for the same origin and that the
           tree still has its root at its size and extends it (a log MUST NOT sign a checkpoint
           inconsistent with one it signed before, c2sp.org/tlog-checkpoint "Signatures").
        3. If that checkpoint already covers this tree with these signers, return it unchanged.
        4. Otherwise sign a new checkpoint, store it, and return it.
        """
        signer_ids = _signer_ids(signers)
        with self._transaction(f"publishing a checkpoint for {origin!r}"):
            size = self._meta("integrated_size")
            root = merkle.root_from_node_getter(size, self._stored_node)
            latest = self._db.execute(
                "SELECT signers, note FROM checkpoints ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if latest is not None:
                previous = _note_checkpoint(bytes(latest[1]))
                self._check_extends(previous, origin=origin, size=size, root=root)
                if previous.size == size and latest[0] == signer_ids:
                    return bytes(latest[1])
            body = Checkpoint(origin=origin, size=size, root_hash=root).to_body()
            note = sign_note(body, signers)
            self._db.execute(
                "INSERT INTO checkpoints (signers, note) VALUES (?, ?)", (signer_ids, note)
            )
        return note

    def _check_extends(self, previous: Checkpoint, *, origin: str, size: int, root: bytes) -> None:
        if previous.origin != origin:
            raise AuditError(
                f"transparency log: holds checkpoints for {previous.origin!r}, not {origin!r}"
            )
        try:
            if previous.size > size:
                raise ProofError(f"the tree is smaller than the published size {previous.size}")
            merkle.verify_consistency(
                old_size=previous.size,
                new_size=size,
                old_root=previous.root_hash,
                new_root=root,
                proof=merkle.consistency_proof(previous.size, size, self._stored_node),
            )
        except ProofError as exc:
            raise AuditError(
                f"transparency log: refusing to sign size {size}, inconsistent with the "
                f"published checkpoint at size {previous.size}: {exc}"
            ) from None

    # -- reads -------------------------------------------------------------------------------

    def size(self) -> int:
        """The integrated tree size: the largest size proofs and checkpoints can cover."""
        with self._guard("reading the tree size"):
            return self._meta("integrated_size")

    def sequenced_size(self) -> int:
        """How many entries are durably sequenced (integrated or not)."""
        with self._guard("reading the sequenced size"):
            return self._sequenced()

    def entry(self, index: int) -> bytes:
        """The entry at ``index``."""
        with self._guard(f"reading entry {index}"):
            row = self._db.execute("SELECT data FROM entries WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise InputError(f"the log has no entry {index}")
        return bytes(row[0])

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree of ``2**level`` leaves at leaf ``index * 2**level``."""
        with self._guard(f"reading node ({level}, {index})"):
            if not (0 <= level < 64 and index >= 0 and (index + 1) << level <= self._size()):
                raise InputError(f"node ({level}, {index}) is not in the integrated tree")
            return self._stored_node(level, index)

    def _size(self) -> int:
        return self._meta("integrated_size")

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, ...]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        with self._guard(f"proving inclusion of {index} in {size}"):
            if not 0 <= index < size <= self._size():
                raise InputError(f"cannot prove leaf {index} in a tree of size {size}")
            return merkle.inclusion_proof(index, size, self._stored_node)

    def consistency_proof(self, old: int, new: int) -> tuple[bytes, ...]:
        """RFC 9162 consistency proof from tree size ``old`` to ``new``."""
        with self._guard(f"proving consistency of {old} with {new}"):
            if not 0 <= old <= new <= self._size():
                raise InputError(f"cannot prove size {old} consistent with size {new}")
            return merkle.consistency_proof(old, new, self._stored_node)

    def latest_checkpoint(self) -> bytes | None:
        """The most recently published signed checkpoint, if any."""
        with self._guard("reading the latest checkpoint"):
            row = self._db.execute(
                "SELECT note FROM checkpoints ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return None if row is None else bytes(row[0])

    def checkpoints(self) -> Iterator[bytes]:
        """Every published signed checkpoint, oldest first."""
        query = "SELECT seq, note FROM checkpoints WHERE seq > ? ORDER BY seq LIMIT ?"
        for _, note in self._batches(query):
            yield bytes(note)

    def entries_with_leaf_hashes(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(index, entry, stored leaf hash) for every sequenced entry, in index order."""
        query = "SELECT idx, data, leaf_hash FROM entries WHERE idx > ? ORDER BY idx LIMIT ?"
        for index, data, stored in self._batches(query):
            yield int(index), bytes(data), bytes(stored)

    def node_rows(self) -> Iterator[tuple[int, int, bytes]]:
        """(level, index, hash) for every stored node row of level 1 and up."""
        level = 0
        while True:
            with self._guard("reading node rows"):
                level_rows = self._db.execute(
                    "SELECT MIN(level) FROM nodes WHERE level > ?", (level,)
                ).fetchone()[0]
            if level_rows is None:
                return
            level = int(level_rows)
            query = "SELECT idx, hash FROM nodes WHERE level = ? AND idx > ? ORDER BY idx LIMIT ?"
            for index, value in self._batches(query, level):
                yield level, int(index), bytes(value)

    def _batches(self, query: str, *params: object) -> Iterator[tuple[Any, ...]]:
        """Rows of ``query`` in key order, a batch per lock hold.

        ``query`` selects the ordering key first and ends in ``key > ? ORDER BY key LIMIT ?``.
        """
        last = -1
        while True:
            with self._guard("reading the log"):
                rows = self._db.execute(query, (*params, last, _BATCH)).fetchall()
            yield from rows
            if len(rows) < _BATCH:
                return
            last = rows[-1][0]

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; further calls fail."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SQLiteLogStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
