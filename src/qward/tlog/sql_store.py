"""The log's three phases, proofs and reads in portable SQL, over a small driver interface.

``SQLLogStore`` is everything the SQLite and PostgreSQL stores share: the phase logic, proof
serving and the batched reads the audit streams through. A driver subclass supplies four
primitives (run a statement, run one statement for many rows, fetch rows, and one serialized write
transaction that rolls back if its body raises) and the exception types its library raises.
Statements are written with ``?`` placeholders; a driver rewrites them if its library wants another
style.

Tables: ``entries`` (index, entry bytes, leaf hash), ``nodes`` (level >= 1, index, hash of the
perfect subtree of ``2**level`` leaves at ``index * 2**level``, as in tlog tiles), ``checkpoints``
(number from 1 without gaps, signer ids, signed note) and ``meta`` (schema version, integrated
size). Every database failure surfaces as ``AuditError`` naming what failed: the log fails closed.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from qward.errors import AuditError, InputError, ProofError, VerificationError
from qward.tlog import merkle
from qward.tlog.backend import Fence, check_entries, note_checkpoint, signer_ids
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import NoteSigner, add_signature_lines, sign_note

__all__ = ["SCHEMA_VERSION", "SQLLogStore"]

SCHEMA_VERSION = 1
_BATCH = 512
# How many of the newest checkpoints witness cosignatures may still be added to.
_COSIGN_WINDOW = 16

Row = tuple[Any, ...]
# How often a publish starts again when the tree or the checkpoints changed while it signed.
_PUBLISH_ATTEMPTS = 3


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    """A checkpoint to sign: the tree it covers and what storing it writes."""

    size: int
    root: bytes
    integrated: int
    rows: list[tuple[int, int, bytes]]
    seq: int
    signers: str


def _blob(value: object, what: str) -> bytes:
    """A stored byte string; a row edited to hold anything else is tampering, said as such."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise VerificationError(f"{what} is stored as {type(value).__name__}, not bytes")


class _Guard:
    """``SQLLogStore._guard`` as a plain class: it wraps every store call, so it stays cheap."""

    __slots__ = ("_store", "_what")

    def __init__(self, store: SQLLogStore, what: str) -> None:
        self._store = store
        self._what = what

    def __enter__(self) -> None:
        self._store._lock.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._store._lock.release()
        if exc is not None and isinstance(exc, self._store.driver_errors):
            raise AuditError(f"transparency log: {self._what} failed: {exc}") from None


class SQLLogStore(ABC):
    """A transparency log in SQL tables; subclasses bind it to one database driver."""

    #: The exceptions of the driver library that mean the database failed.
    driver_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(self) -> None:
        # One lock per store object: a driver connection is not safe for interleaved use, and the
        # read-compute-write phases must not interleave with each other within this process.
        self._lock = threading.RLock()

    # -- driver primitives -------------------------------------------------------------------

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Every row ``sql`` returns."""

    @abstractmethod
    def _run(self, sql: str, params: Sequence[object] = ()) -> None:
        """Execute one statement."""

    @abstractmethod
    def _insert(
        self, table: str, columns: tuple[str, ...], rows: Sequence[Sequence[object]]
    ) -> None:
        """Insert ``rows`` of ``columns`` into ``table``, as fast as the driver can."""

    @abstractmethod
    def _write(self, *, durable: bool = True) -> AbstractContextManager[None]:
        """One write transaction, serialized against every other writer of this log.

        Without ``durable`` the commit need not reach the disk before it returns (see
        ``LogBackend.sequence``); every durable commit after it flushes it too.
        """

    @abstractmethod
    def _close(self) -> None:
        """Close the connection."""

    # -- plumbing ----------------------------------------------------------------------------

    def _guard(self, what: str) -> _Guard:
        """Hold the lock and turn database failures into ``AuditError`` naming ``what``."""
        return _Guard(self, what)

    @contextmanager
    def _transaction(self, what: str, *, durable: bool = True) -> Iterator[None]:
        with _Guard(self, what), self._write(durable=durable):
            yield

    def _one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _meta(self, key: str) -> int:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        if row is None:
            raise AuditError(f"transparency log: metadata {key!r} is missing")
        return int(row[0])

    def _sequenced(self) -> int:
        row = self._one("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries")
        return 0 if row is None else int(row[0])

    def _stored_node(self, level: int, index: int) -> bytes:
        if level == 0:
            found = self._one("SELECT leaf_hash FROM entries WHERE idx = ?", (index,))
        else:
            found = self._one("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index))
        if found is None:
            raise AuditError(f"transparency log: node ({level}, {index}) is missing")
        return bytes(found[0])

    # -- the three phases --------------------------------------------------------------------

    def sequence(self, entries: Sequence[bytes], *, durable: bool = True) -> list[int]:
        """Append ``entries``; returns their indices once they are committed (see
        ``LogBackend.sequence`` for ``durable``)."""
        check_entries(entries)
        if not entries:
            return []
        rows = [(e, merkle.leaf_hash(e)) for e in entries]
        with self._transaction(f"sequencing {len(entries)} entries", durable=durable):
            first = self._sequenced()
            self._insert(
                "entries",
                ("idx", "data", "leaf_hash"),
                [(first + i, e, h) for i, (e, h) in enumerate(rows)],
            )
        return list(range(first, first + len(entries)))

    def integrate(self) -> tuple[int, bytes]:
        """Store the subtree hashes the newly sequenced leaves complete; returns (size, root)."""
        with self._transaction("integrating sequenced entries"):
            return self._integrate_locked()

    def _integrate_locked(self) -> tuple[int, bytes]:
        old, new = self._meta("integrated_size"), self._sequenced()
        if old > new:
            raise AuditError(f"transparency log: integrated size {old} exceeds {new} entries")
        if new > old:
            rows = self._new_nodes(old, new)
            self._insert("nodes", ("level", "idx", "hash"), rows)
            self._run("UPDATE meta SET value = ? WHERE key = 'integrated_size'", (new,))
        return new, merkle.root_from_node_getter(new, self._stored_node)

    def _new_nodes(self, old: int, new: int) -> list[tuple[int, int, bytes]]:
        """Every perfect subtree that is complete at size ``new`` but was not at size ``old``.

        ``below[k]`` is node ``(level - 1, low + k)``. Level 0 starts at the even index at or
        below ``old``, so the first new parent finds its left child among the loaded leaves; on a
        higher level that left child may be older than this batch, and is then read from storage.
        """
        low = old & ~1
        below = [
            bytes(h)
            for (h,) in self._rows(
                "SELECT leaf_hash FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (low, new)
            )
        ]
        if len(below) != new - low:
            raise AuditError(f"transparency log: entries {low}..{new - 1} are not all present")
        rows: list[tuple[int, int, bytes]] = []
        level = 1
        while (new >> level) > (old >> level):
            first, end = old >> level, new >> level
            if 2 * first < low:
                below.insert(0, self._stored_node(level - 1, 2 * first))
                low = 2 * first
            skip = 2 * first - low
            current = [
                merkle.node_hash(below[skip + 2 * k], below[skip + 2 * k + 1])
                for k in range(end - first)
            ]
            rows.extend((level, first + k, value) for k, value in enumerate(current))
            below, low, level = current, first, level + 1
        return rows

    def _check_fence(self, fence: Fence) -> None:
        """Raise ``FencedError`` unless ``fence`` is the current publisher lease; called inside
        the publishing transaction. Only a store that several processes share has leases."""
        raise AuditError("transparency log: this store has a single writer and no publisher lease")

    def publish(
        self,
        *,
        origin: str,
        signers: Sequence[NoteSigner],
        integrate: bool = False,
        fence: Fence | None = None,
    ) -> bytes:
        """Sign and store a checkpoint for the integrated tree; returns the signed note.

        0. With ``fence``, check that it is still the log's current publisher lease (in the same
           serialized transaction as the checkpoint's insertion, so a stale publisher never
           commits one).
        1. Compute the root of the integrated tree from the stored nodes (with ``integrate``,
           of the tree with everything sequenced integrated, whose new nodes are stored with the
           checkpoint: the tree never grows past its latest checkpoint).
        2. If a checkpoint was published before, check it is for the same origin and that the
           tree still has its root at its size and extends it (a log MUST NOT sign a checkpoint
           inconsistent with one it signed before, c2sp.org/tlog-checkpoint "Signatures").
        3. If that checkpoint already covers this tree with these signers, return it unchanged.
        4. Otherwise sign a new checkpoint, store it under the next number, and return it.

        Steps 1 to 3 only read; the signature is made outside any transaction, so appends go on
        meanwhile; step 4 stores the new nodes and the checkpoint in one durable transaction,
        after checking that neither the tree nor the checkpoints changed in between (then it
        starts again).
        """
        for _ in range(_PUBLISH_ATTEMPTS):
            prepared = self._prepare(
                origin=origin, signers=signers, integrate=integrate, fence=fence
            )
            if isinstance(prepared, bytes):
                return prepared
            note = sign_note(
                Checkpoint(origin=origin, size=prepared.size, root_hash=prepared.root).to_body(),
                signers,
            )
            if self._store_checkpoint(prepared, note, origin=origin, fence=fence):
                return note
        raise AuditError(
            f"transparency log: the tree kept changing while a checkpoint for {origin!r} was "
            f"signed ({_PUBLISH_ATTEMPTS} attempts)"
        )

    def _prepare(
        self,
        *,
        origin: str,
        signers: Sequence[NoteSigner],
        integrate: bool,
        fence: Fence | None,
    ) -> _Prepared | bytes:
        """Steps 0 to 3: what to sign, or the latest note if it already covers the tree (the
        fence is checked again when the checkpoint is stored)."""
        ids = signer_ids(signers)
        with self._guard(f"publishing a checkpoint for {origin!r}"):
            if fence is not None:
                self._check_fence(fence)
            integrated = self._meta("integrated_size")
            sequenced = self._sequenced() if integrate else integrated
            if integrated > sequenced:
                raise AuditError(
                    f"transparency log: integrated size {integrated} exceeds {sequenced} entries"
                )
            rows = self._new_nodes(integrated, sequenced) if sequenced > integrated else []
            fresh = {(level, index): value for level, index, value in rows}

            def node(level: int, index: int) -> bytes:
                found = fresh.get((level, index))
                return found if found is not None else self._stored_node(level, index)

            root = merkle.root_from_node_getter(sequenced, node)
            latest = self._one(
                "SELECT seq, signers, note FROM checkpoints ORDER BY seq DESC LIMIT 1"
            )
            if latest is not None:
                previous = note_checkpoint(_blob(latest[2], f"checkpoint #{latest[0]}"))
                self._check_extends(previous, origin=origin, size=sequenced, root=root, node=node)
                if previous.size == sequenced and latest[1] == ids and not rows:
                    return _blob(latest[2], f"checkpoint #{latest[0]}")
        return _Prepared(
            size=sequenced,
            root=root,
            integrated=integrated,
            rows=rows,
            seq=1 if latest is None else int(latest[0]) + 1,
            signers=ids,
        )

    def _store_checkpoint(
        self, prepared: _Prepared, note: bytes, *, origin: str, fence: Fence | None
    ) -> bool:
        """Step 4; False (nothing written) if the tree or the checkpoints changed meanwhile."""
        with self._transaction(f"publishing a checkpoint for {origin!r}: storing it"):
            if fence is not None:
                self._check_fence(fence)
            # Numbered after the one checked, inside the serialized transaction: the numbers stay
            # dense, so the audit can tell a deleted checkpoint row.
            newest = self._one("SELECT COALESCE(MAX(seq), 0) FROM checkpoints")
            if newest is None or int(newest[0]) != prepared.seq - 1:
                return False
            if self._meta("integrated_size") != prepared.integrated:
                return False
            if prepared.rows:
                self._insert("nodes", ("level", "idx", "hash"), prepared.rows)
            if prepared.size != prepared.integrated:
                self._run(
                    "UPDATE meta SET value = ? WHERE key = 'integrated_size'", (prepared.size,)
                )
            self._run(
                "INSERT INTO checkpoints (seq, signers, note) VALUES (?, ?, ?)",
                (prepared.seq, prepared.signers, note),
            )
        return True

    def add_cosignatures(self, note: bytes) -> None:
        """Replace a recent checkpoint with ``note``: the same note plus witness cosignatures.

        Only signature lines may be added; the text and the log's own signatures stay as they
        were, so the audit and every client see the same checkpoint, now cosigned. It is one of
        the last few checkpoints: where several cores share the log, another may have published
        after this one was signed.
        """
        with self._transaction("storing witness cosignatures"):
            for seq, stored in self._rows(
                "SELECT seq, note FROM checkpoints ORDER BY seq DESC LIMIT ?", (_COSIGN_WINDOW,)
            ):
                signed = _blob(stored, f"checkpoint #{seq}")
                if note.startswith(signed):
                    add_signature_lines(signed, note[len(signed) :])
                    self._run("UPDATE checkpoints SET note = ? WHERE seq = ?", (note, seq))
                    return
            raise AuditError("transparency log: cosignatures must extend a recent checkpoint")

    def _check_extends(
        self,
        previous: Checkpoint,
        *,
        origin: str,
        size: int,
        root: bytes,
        node: Callable[[int, int], bytes],
    ) -> None:
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
                proof=merkle.consistency_proof(previous.size, size, node),
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
            row = self._one("SELECT data FROM entries WHERE idx = ?", (index,))
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
            row = self._one("SELECT note FROM checkpoints ORDER BY seq DESC LIMIT 1")
        return None if row is None else bytes(row[0])

    def checkpoints(self) -> Iterator[bytes]:
        """Every published signed checkpoint, oldest first."""
        for _, _, note in self.checkpoint_rows():
            yield note

    def checkpoint_rows(self) -> Iterator[tuple[int, str, bytes]]:
        """(number, signer ids, signed note) of every stored checkpoint, in number order."""
        query = "SELECT seq, signers, note FROM checkpoints WHERE seq > ? ORDER BY seq LIMIT ?"
        for number, ids, note in self._batches(query):
            yield int(number), str(ids), _blob(note, f"checkpoint #{number}")

    def entries_with_leaf_hashes(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(index, entry, stored leaf hash) for every sequenced entry, in index order."""
        query = "SELECT idx, data, leaf_hash FROM entries WHERE idx > ? ORDER BY idx LIMIT ?"
        for index, data, stored in self._batches(query):
            yield (
                int(index),
                _blob(data, f"log entry {index}"),
                _blob(stored, f"leaf hash of entry {index}"),
            )

    def node_rows(self) -> Iterator[tuple[int, int, bytes]]:
        """(level, index, hash) for every stored node row of level 1 and up, level by level."""
        level = 0
        while True:
            with self._guard("reading node rows"):
                found = self._one("SELECT MIN(level) FROM nodes WHERE level > ?", (level,))
            if found is None or found[0] is None:
                return
            level = int(found[0])
            for index, value in self.level_rows(level):
                yield level, index, value

    def level_rows(self, level: int) -> Iterator[tuple[int, bytes]]:
        """(index, hash) of the stored nodes of one level in index order; 0 gives leaf hashes."""
        if level == 0:
            rows = self._batches(
                "SELECT idx, leaf_hash FROM entries WHERE idx > ? ORDER BY idx LIMIT ?"
            )
        else:
            rows = self._batches(
                "SELECT idx, hash FROM nodes WHERE level = ? AND idx > ? ORDER BY idx LIMIT ?",
                level,
            )
        for index, value in rows:
            yield int(index), _blob(value, f"log node ({level}, {index})")

    def _batches(self, query: str, *params: object) -> Iterator[Row]:
        """Rows of ``query`` in key order, a batch per lock hold.

        ``query`` selects the ordering key first and ends in ``key > ? ORDER BY key LIMIT ?``.
        """
        last = -(2**63)
        while True:
            with self._guard("reading the log"):
                rows = self._rows(query, (*params, last, _BATCH))
            yield from rows
            if len(rows) < _BATCH:
                return
            last = rows[-1][0]

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; further calls fail."""
        with self._lock:
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
