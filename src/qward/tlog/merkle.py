"""RFC 9162 Merkle tree hashing, proofs and proof verification, with no storage.

Proof generation works over a *node getter*: ``node(level, index)`` returns the hash of the
complete (perfect) subtree of ``2**level`` leaves that starts at leaf ``index * 2**level``. That is
exactly what tile storage holds, so a store answers proofs with O(log n) lookups. Level 0 holds the
leaf hashes themselves.

Sizes and indices are plain ``int``; callers that accept them from the wire bound them first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from qward.errors import InputError, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "NodeGetter",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "root_from_node_getter",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32

#: MTH({}) = SHA-256() (RFC 9162 §2.1.1): the root of the empty tree.
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeGetter = Callable[[int, int], bytes]


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d0}) = SHA-256(0x00 || d0), the hash of one leaf (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), the hash of an interior node (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``), where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(start: int, end: int, node: NodeGetter) -> bytes:
    """MTH(D[start:end]) for ``start < end``, using stored perfect subtrees where aligned.

    Ranges that occur in RFC 9162 trees (the root range and every range a proof names) decompose
    into at most one stored node per level, so this makes O(log n) lookups for them.
    """
    if not 0 <= start < end:
        raise InputError(f"subtree [{start}, {end}) is empty or negative")
    n = end - start
    if n & (n - 1) == 0 and start % n == 0:
        return node(n.bit_length() - 1, start // n)
    k = _split(n)
    return node_hash(subtree_hash(start, start + k, node), subtree_hash(start + k, end, node))


def root_from_node_getter(size: int, node: NodeGetter) -> bytes:
    """MTH(D[0:size]): the root hash of the tree of ``size`` leaves."""
    if size < 0:
        raise InputError(f"tree size {size} is negative")
    return EMPTY_ROOT if size == 0 else subtree_hash(0, size, node)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over a full list of leaf hashes (RFC 9162 §2.1.1), level by level."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    # Pairing neighbours level by level and carrying an odd last node up unchanged gives the same
    # tree as the RFC's split at the largest power of two, because left subtrees are always full.
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(index: int, size: int, node: NodeGetter) -> tuple[bytes, ...]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, ordered from the leaf up to the root."""
    if not 0 <= index < size:
        raise InputError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end, m = 0, size, index
    # The RFC's recursion appends each level's sibling after the deeper path, so walking from the
    # root down collects siblings top-first; the list is reversed at the end.
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            path.append(subtree_hash(start + k, end, node))
            end = start + k
        else:
            path.append(subtree_hash(start, start + k, node))
            start, m = start + k, m - k
    return tuple(reversed(path))


def consistency_proof(old_size: int, new_size: int, node: NodeGetter) -> tuple[bytes, ...]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1; empty when there is nothing to prove."""
    if not 0 <= old_size <= new_size:
        raise InputError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return ()
    path: list[bytes] = []
    start, end, m, whole = 0, new_size, old_size, True
    # SUBPROOF(m, D[start:end], whole), unrolled: each step records the sibling subtree the RFC
    # appends after recursing, and the recursion ends where m covers the whole current range.
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            path.append(subtree_hash(start + k, end, node))
            end = start + k
        else:
            path.append(subtree_hash(start, start + k, node))
            start, m, whole = start + k, m - k, False
    if not whole:
        path.append(subtree_hash(start, end, node))
    return tuple(reversed(path))


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, not a {HASH_SIZE}-byte SHA-256 hash")


def verify_inclusion(
    *, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Verify that ``leaf_hash`` is leaf ``index`` of tree ``(size, root)``, or raise ProofError."""
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root hash")
    for p in proof:
        _check_hash(p, "inclusion proof node")
    # RFC 9162 §2.1.3.2, step by step.
    # 1. If leaf_index is greater than or equal to tree_size, fail.
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    # 2. Set fn to leaf_index and sn to tree_size - 1.  3. Set r to hash.
    fn, sn, r = index, size - 1, leaf_hash
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        # a. If sn is 0, stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError(f"inclusion proof for leaf {index} of {size} is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = node_hash(p, r)
            # ii. If LSB(fn) is not set, right-shift fn and sn equally until LSB(fn) is set or
            # fn is 0.
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            # Otherwise: i. Set r to HASH(0x01 || r || p).
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn, sn = fn >> 1, sn >> 1
    # 5. Compare sn to 0 and r against the root_hash.
    if sn != 0:
        raise ProofError(f"inclusion proof for leaf {index} of {size} is too short")
    if r != root:
        raise ProofError(f"inclusion proof for leaf {index} of {size} does not lead to the root")


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Verify that tree (new_size, new_root) extends (old_size, old_root), or raise ProofError.

    From size 0 this accepts an empty proof when the old root is the empty tree's hash: the empty
    tree is a prefix of every tree, so there is nothing to prove, and c2sp.org/tlog-witness asks
    exactly this of a witness's first checkpoint of a log (old size 0, empty proof). The Go
    reference library instead rejects a check from the empty tree as meaningless; qward's witness
    and verifiers agree with each other on accepting it (and refuse a size-0 checkpoint whose
    root is anything else).
    """
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    for c in proof:
        _check_hash(c, "consistency proof node")
    what = f"consistency proof from size {old_size} to {new_size}"
    if not 0 <= old_size <= new_size:
        raise ProofError(f"{what}: a log cannot shrink")
    # RFC 9162 §2.1.4.2 covers 0 < first < second; the two trivial cases have nothing to prove, and
    # an honest prover sends an empty path for them (§2.1.4.1).
    if old_size in (0, new_size):
        if proof:
            raise ProofError(f"{what}: expected an empty proof")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError(f"{what}: the old root is not the empty tree's root")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"{what}: two different roots for one tree size")
        return
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not proof:
        raise ProofError(f"{what}: the proof is empty")
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    path = [old_root, *proof] if old_size & (old_size - 1) == 0 else list(proof)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError(f"{what}: the proof is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr). Set sr to HASH(0x01 || c || sr).
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            # ii. If LSB(fn) is not set, right-shift fn and sn equally until either LSB(fn) is set
            # or fn is 0.
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            # Otherwise: i. Set sr to HASH(0x01 || sr || c).
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn, sn = fn >> 1, sn >> 1
    # 7. Verify that fr equals first_hash, that sr equals second_hash, and that sn is 0.
    if sn != 0:
        raise ProofError(f"{what}: the proof is too short")
    if fr != old_root:
        raise ProofError(f"{what}: the proof does not lead to the old root")
    if sr != new_root:
        raise ProofError(f"{what}: the proof does not lead to the new root")
