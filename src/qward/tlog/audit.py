"""Full audit of a stored log: recompute everything from the entry bytes, trust no stored hash.

The audit rebuilds the Merkle tree from the raw entries, so a changed entry, leaf hash, node row or
checkpoint is caught even if the attacker rewrote every derived row to match: the signed
checkpoints pin the roots, and the roots are recomputed here from the entries alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from qward.errors import (
    FormatError,
    InputError,
    LogInconsistencyError,
    ProofError,
    SignatureError,
    VerificationError,
)
from qward.tlog import merkle
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import NoteVerifier, open_note
from qward.tlog.store import SQLiteLogStore

__all__ = ["LogAuditReport", "verify_log"]

_H = merkle.HASH_SIZE


@dataclass(frozen=True, kw_only=True)
class LogAuditReport:
    """What a successful audit covered."""

    entries: int
    tree_size: int
    checkpoints: int
    seconds: float


class _RecomputedTree:
    """Every perfect-subtree hash of a tree, rebuilt from leaf hashes; one flat buffer per level."""

    def __init__(self, leaf_hashes: bytes) -> None:
        self.levels = [leaf_hashes]
        while len(self.levels[-1]) >= 2 * _H:
            below = self.levels[-1]
            self.levels.append(
                b"".join(
                    merkle.node_hash(below[i : i + _H], below[i + _H : i + 2 * _H])
                    for i in range(0, len(below) - _H, 2 * _H)
                )
            )

    @property
    def size(self) -> int:
        return len(self.levels[0]) // _H

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index * _H : (index + 1) * _H]

    def node_keys(self) -> Iterator[tuple[int, int]]:
        """(level, index) of every node of level 1 and up, in the store's row order."""
        for level in range(1, len(self.levels)):
            for index in range(len(self.levels[level]) // _H):
                yield level, index


def _check_entries(store: SQLiteLogStore, tree_size: int) -> tuple[int, bytes]:
    """Step 1: recompute each leaf hash from the entry bytes; returns (count, tree leaf hashes)."""
    leaves = bytearray()
    count = 0
    for index, entry, stored in store.entries_with_leaf_hashes():
        if index != count:
            raise VerificationError(f"log entry {count} is missing (next stored index {index})")
        computed = merkle.leaf_hash(entry)
        if computed != stored:
            raise VerificationError(f"log entry {index}: bytes do not match the stored leaf hash")
        if index < tree_size:
            leaves += computed
        count += 1
    if count < tree_size:
        raise VerificationError(f"log has {count} entries but claims a tree of size {tree_size}")
    return count, bytes(leaves)


def _check_nodes(store: SQLiteLogStore, tree: _RecomputedTree) -> None:
    """Step 2: every stored node row equals the recomputed node, and none is missing or extra."""
    expected = tree.node_keys()
    for level, index, stored in store.node_rows():
        want = next(expected, None)
        if want is not None and want < (level, index):
            raise VerificationError(f"log node {want} is missing")
        if want != (level, index):
            raise VerificationError(f"log node {(level, index)} is outside the tree")
        if tree.node(level, index) != stored:
            raise VerificationError(f"log node {(level, index)} differs from the recomputed tree")
    missing = next(expected, None)
    if missing is not None:
        raise VerificationError(f"log node {missing} is missing")


def _open_checkpoint(
    note: bytes, number: int, *, origin: str, verifiers: Sequence[NoteVerifier]
) -> Checkpoint:
    try:
        text, _ = open_note(note, verifiers)
        checkpoint = Checkpoint.from_body(text)
    except (SignatureError, FormatError) as exc:
        raise type(exc)(f"checkpoint #{number}: {exc}") from None
    if checkpoint.origin != origin:
        raise VerificationError(f"checkpoint #{number} is for log {checkpoint.origin!r}")
    return checkpoint


def _check_checkpoints(
    store: SQLiteLogStore,
    tree: _RecomputedTree,
    *,
    origin: str,
    verifiers: Sequence[NoteVerifier],
) -> int:
    """Step 3: signatures, roots against the recomputed tree, and consistency of successors."""
    previous: tuple[bytes, Checkpoint] | None = None
    count = 0
    for count, note in enumerate(store.checkpoints(), start=1):
        checkpoint = _open_checkpoint(note, count, origin=origin, verifiers=verifiers)
        size = checkpoint.size
        if size > tree.size:
            raise VerificationError(f"checkpoint at size {size} is beyond the tree ({tree.size})")
        if merkle.root_from_node_getter(size, tree.node) != checkpoint.root_hash:
            raise ProofError(f"checkpoint at size {size}: root differs from the recomputed tree")
        if previous is not None:
            _check_consistent(previous, (note, checkpoint), tree)
        previous = (note, checkpoint)
    return count


def _check_consistent(
    older: tuple[bytes, Checkpoint], newer: tuple[bytes, Checkpoint], tree: _RecomputedTree
) -> None:
    old, new = older[1], newer[1]
    if old.size > new.size:
        raise VerificationError(f"checkpoint at size {new.size} follows one at size {old.size}")
    proof = merkle.consistency_proof(old.size, new.size, tree.node)
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
    store: SQLiteLogStore,
    *,
    origin: str,
    verifiers: Sequence[NoteVerifier],
    clock: Callable[[], float] = time.perf_counter,
) -> LogAuditReport:
    """Audit the whole log in ``store``; raise a ``VerificationError`` naming the first fault.

    1. Recompute every leaf hash from the stored entry bytes and compare it with the stored one;
       rebuild the whole tree from those leaf hashes alone.
    2. Compare every stored node row with the rebuilt tree (none missing, none extra).
    3. Open every stored checkpoint with all ``verifiers`` required, check its origin, check its
       root against the rebuilt tree at its size, and verify an RFC 9162 consistency proof from
       the rebuilt tree between each checkpoint and the next.
    """
    if not verifiers:
        raise InputError("a log audit needs at least one trusted log key")
    started = clock()
    entries, leaves = _check_entries(store, store.size())
    tree = _RecomputedTree(leaves)
    _check_nodes(store, tree)
    checkpoints = _check_checkpoints(store, tree, origin=origin, verifiers=verifiers)
    return LogAuditReport(
        entries=entries, tree_size=tree.size, checkpoints=checkpoints, seconds=clock() - started
    )
