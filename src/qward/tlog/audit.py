"""Full audit of a stored log: recompute everything from the entry bytes, trust no stored hash.

The audit rebuilds the Merkle tree from the raw entries, so a changed entry, leaf hash, node row or
checkpoint is caught even if the attacker rewrote every derived row to match: the signed
checkpoints pin the roots, and the roots are recomputed here from the entries alone.

It streams: each stored node is checked against the hash of its two children, read back level by
level, so by induction from the leaves every stored node equals the recomputed one, and memory
stays at a few read batches however large the log is. Checkpoint roots and proofs are then
computed from those verified nodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from qward.encoding import b64decode
from qward.errors import (
    FormatError,
    InputError,
    LogInconsistencyError,
    ProofError,
    SignatureError,
    VerificationError,
)
from qward.tlog import merkle
from qward.tlog.backend import LogBackend, signer_ids
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import NoteVerifier, open_note_by_any_set

__all__ = ["LogAuditReport", "verify_log"]


@dataclass(frozen=True, kw_only=True)
class LogAuditReport:
    """What a successful audit covered; ``latest`` is the newest signed checkpoint (the note)."""

    entries: int
    tree_size: int
    checkpoints: int
    seconds: float
    latest: bytes
    trusted: int = 0


def _check_entries(store: LogBackend, tree_size: int) -> int:
    """Step 1: recompute each leaf hash from the entry bytes; returns the number of entries."""
    count = 0
    for index, entry, stored in store.entries_with_leaf_hashes():
        if index < count:
            raise VerificationError(f"log entry {index} is outside the log")
        if index != count:
            raise VerificationError(f"log entry {count} is missing (next stored index {index})")
        if merkle.leaf_hash(entry) != stored:
            raise VerificationError(f"log entry {index}: bytes do not match the stored leaf hash")
        count += 1
    if count < tree_size:
        raise VerificationError(f"log has {count} entries but claims a tree of size {tree_size}")
    return count


def _next_expected(size: int, level: int, index: int) -> tuple[int, int] | None:
    """The first node of the tree of ``size`` at or after (level, index) in row order."""
    while size >> level:
        if index < size >> level:
            return level, index
        level, index = level + 1, 0
    return None


class _Children:
    """The stored nodes one level down, read in step with the parents being checked."""

    def __init__(self, store: LogBackend, level: int) -> None:
        self._level = level - 1
        self._rows: Iterator[tuple[int, bytes]] = store.level_rows(level - 1)

    def pair(self, parent: int) -> tuple[bytes, bytes]:
        # The level below was checked complete before this one is read, so its rows come in order.
        found = []
        for want in (2 * parent, 2 * parent + 1):
            index, value = next(self._rows, (None, b""))
            if index != want:
                raise VerificationError(f"log node {(self._level, want)} is missing")
            found.append(value)
        return found[0], found[1]


def _check_nodes(store: LogBackend, size: int) -> None:
    """Step 2: every stored node row is the hash of its children; none is missing or extra."""
    level, index = 1, 0
    children: _Children | None = None
    for row_level, row_index, stored in store.node_rows():
        want = _next_expected(size, level, index)
        if want is not None and want < (row_level, row_index):
            raise VerificationError(f"log node {want} is missing")
        if want != (row_level, row_index):
            raise VerificationError(f"log node {(row_level, row_index)} is outside the tree")
        if children is None or row_level != level:
            children = _Children(store, row_level)
        if merkle.node_hash(*children.pair(row_index)) != stored:
            raise VerificationError(
                f"log node {(row_level, row_index)} differs from the recomputed tree"
            )
        level, index = row_level, row_index + 1
    missing = _next_expected(size, level, index)
    if missing is not None:
        raise VerificationError(f"log node {missing} is missing")


def _open_checkpoint(
    note: bytes, number: int, *, origin: str, key_sets: Sequence[Sequence[NoteVerifier]]
) -> Checkpoint:
    try:
        text, _ = open_note_by_any_set(note, key_sets)
        checkpoint = Checkpoint.from_body(text)
    except (SignatureError, FormatError) as exc:
        raise type(exc)(f"checkpoint #{number}: {exc}") from None
    if checkpoint.origin != origin:
        raise VerificationError(f"checkpoint #{number} is for log {checkpoint.origin!r}")
    return checkpoint


def _check_signer_ids(
    note: bytes,
    stored: str,
    number: int,
    verifiers: Sequence[NoteVerifier],
    cosigners: Sequence[NoteVerifier],
) -> None:
    """The row's signer list names exactly the trusted keys that signed, in signature order.

    Only the pinned witnesses' cosignatures may follow the log's own lines (they are added after
    publication, ``add_cosignatures``), and each must verify; a line by any other key is caught.
    """
    text = note[: note.rfind(b"\n\n") + 1]
    witnesses = {(w.name, w.key_id): w for w in cosigners}
    # ``open_note`` has already parsed this note strictly, so its signature lines are well formed.
    trusted = {(v.name, v.key_id): v for v in verifiers}
    signed: list[NoteVerifier] = []
    cosigned = False
    for line in note[note.rfind(b"\n\n") + 2 :].decode("utf-8").splitlines():
        name, encoded = line.split(" ")[1:]
        raw = b64decode(encoded, what="note signature")
        key = trusted.get((name, raw[:4]))
        if key is None:
            witness = witnesses.get((name, raw[:4]))
            if witness is None:
                raise VerificationError(
                    f"checkpoint #{number} carries a signature by unknown {name!r}"
                )
            witness.verify(text, raw[4:])
            cosigned = True
        elif cosigned:
            raise VerificationError(
                f"checkpoint #{number}: a log signature follows a line by an unknown key"
            )
        else:
            signed.append(key)
    if signer_ids(signed) != stored:
        raise VerificationError(f"checkpoint #{number}: its stored signer list was changed")


def _check_checkpoints(
    store: LogBackend,
    size: int,
    *,
    origin: str,
    key_sets: Sequence[Sequence[NoteVerifier]],
    cosigners: Sequence[NoteVerifier],
) -> tuple[int, tuple[bytes, Checkpoint] | None]:
    """Step 3: signatures, roots against the verified tree, consistency, and dense numbering.
    Returns the number of checkpoints and the latest one."""
    previous: tuple[bytes, Checkpoint] | None = None
    count, renumbered = 0, None
    for count, (number, ids, note) in enumerate(store.checkpoint_rows(), start=1):
        checkpoint = _open_checkpoint(note, count, origin=origin, key_sets=key_sets)
        _check_signer_ids(note, ids, count, [k for s in key_sets for k in s], cosigners)
        if checkpoint.size > size:
            raise VerificationError(
                f"checkpoint at size {checkpoint.size} is beyond the tree ({size})"
            )
        if merkle.root_from_node_getter(checkpoint.size, store.node) != checkpoint.root_hash:
            raise ProofError(
                f"checkpoint at size {checkpoint.size}: root differs from the recomputed tree"
            )
        if previous is not None:
            _check_consistent(previous, (note, checkpoint), store)
        previous = (note, checkpoint)
        if number != count and renumbered is None:
            renumbered = f"checkpoint #{count} is stored as number {number}"
    # A gap means a checkpoint row was deleted; reported last, so that a reordering shows as such.
    if renumbered is not None:
        raise VerificationError(f"checkpoint numbers are not dense: {renumbered}")
    return count, previous


def _check_latest_covers(
    latest: tuple[bytes, Checkpoint] | None, size: int
) -> tuple[bytes, Checkpoint]:
    """Step 4: a signed checkpoint must exist and cover the whole integrated tree.

    Without it nothing pins the entries: whoever can write the database could rewrite them and
    recompute every hash. A tree larger than the latest checkpoint is as unpinned in its tail,
    so it fails too (a running core publishes a checkpoint within about a second of an append).
    Entries sequenced but not yet integrated are in no tree; the report counts them.
    """
    if latest is None:
        raise VerificationError(
            f"the log's tree has {size} entries but no signed checkpoint: nothing pins them"
        )
    checkpoint = latest[1]
    if checkpoint.size != size:
        raise VerificationError(
            f"{size - checkpoint.size} entries after the latest checkpoint (size "
            f"{checkpoint.size}) are covered by no signed checkpoint (if a core is running, "
            "verify again in a second)"
        )
    return latest


def _check_trusted(
    trusted: Sequence[bytes],
    latest: tuple[bytes, Checkpoint],
    store: LogBackend,
    *,
    origin: str,
    key_sets: Sequence[Sequence[NoteVerifier]],
) -> None:
    """Step 5: every checkpoint the verifier trusted before (seen earlier, or given) must be a
    prefix of this log: a smaller log is a rollback, a different root a rewrite."""
    newest_note, newest = latest
    for note in trusted:
        old = _open_checkpoint(note, 0, origin=origin, key_sets=key_sets)
        if old.size > newest.size:
            raise LogInconsistencyError(
                f"the log was rolled back: a trusted checkpoint has size {old.size}, the log's "
                f"latest only {newest.size}",
                older=note,
                newer=newest_note,
                proof=(),
            )
        if old.size and merkle.root_from_node_getter(old.size, store.node) != old.root_hash:
            raise LogInconsistencyError(
                f"the log was rewritten: its tree at size {old.size} differs from the trusted "
                "checkpoint of that size",
                older=note,
                newer=newest_note,
                proof=merkle.consistency_proof(old.size, newest.size, store.node),
            )


def _check_consistent(
    older: tuple[bytes, Checkpoint], newer: tuple[bytes, Checkpoint], store: LogBackend
) -> None:
    old, new = older[1], newer[1]
    if old.size > new.size:
        raise VerificationError(f"checkpoint at size {new.size} follows one at size {old.size}")
    proof = merkle.consistency_proof(old.size, new.size, store.node)
    try:
        merkle.verify_consistency(
            old_size=old.size,
            new_size=new.size,
            old_root=old.root_hash,
            new_root=new.root_hash,
            proof=proof,
        )
    except ProofError as exc:
        raise LogInconsistencyError(
            f"checkpoints at sizes {old.size} and {new.size} are inconsistent: {exc}",
            older=older[0],
            newer=newer[0],
            proof=proof,
        ) from None


def verify_log(
    store: LogBackend,
    *,
    origin: str,
    verifiers: Sequence[NoteVerifier],
    key_sets: Sequence[Sequence[NoteVerifier]] | None = None,
    cosigners: Sequence[NoteVerifier] = (),
    trusted: Sequence[bytes] = (),
    clock: Callable[[], float] = time.perf_counter,
) -> LogAuditReport:
    """Audit the whole log in ``store``; raise a ``VerificationError`` naming the first fault.

    1. Recompute every leaf hash from the stored entry bytes and compare it with the stored one;
       the entries must be numbered 0, 1, ... without gaps and cover the integrated tree.
    2. Check every stored node row, level by level, against the hash of its two children (the
       verified leaf hashes for level 1), so that every stored node equals the tree recomputed
       from the entries; none may be missing and none may lie outside the integrated tree.
    3. Open every stored checkpoint with all ``verifiers`` required (or, for a log that rotated
       its keys, every key of one of ``key_sets``; lines after the log's own must be valid
       cosignatures by ``cosigners``, the pinned witnesses), check its origin and its
       signer list, check its root against the verified tree at its size, verify an RFC 9162
       consistency proof between each checkpoint and the next, and require the checkpoints to be
       numbered 1, 2, ... without gaps.
    4. Require a latest checkpoint, covering every stored entry.
    5. Check each ``trusted`` checkpoint (signed notes the verifier saw or was given before):
       the log must not be smaller (rollback) and its tree at that size must have that root
       (rewrite); the error carries both checkpoints.
    """
    if not verifiers:
        raise InputError("a log audit needs at least one trusted log key")
    started = clock()
    size = store.size()
    entries = _check_entries(store, size)
    _check_nodes(store, size)
    sets = key_sets if key_sets is not None else (verifiers,)
    checkpoints, found = _check_checkpoints(
        store, size, origin=origin, key_sets=sets, cosigners=cosigners
    )
    latest = _check_latest_covers(found, size)
    _check_trusted(trusted, latest, store, origin=origin, key_sets=sets)
    return LogAuditReport(
        entries=entries,
        tree_size=size,
        checkpoints=checkpoints,
        seconds=clock() - started,
        latest=latest[0],
        trusted=len(trusted),
    )
