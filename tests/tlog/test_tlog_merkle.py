"""RFC 9162 Merkle hashing and proofs: known answers first, then properties against the RFC."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.errors import InputError, ProofError
from qward.tlog import merkle

# Known-answer vectors: the 8-leaf test tree shared by certificate-transparency-go and
# github.com/transparency-dev/merkle (testonly/constants.go: LeafInputs, NodeHashes, RootHashes;
# proof/verify_test.go: inclusionProofs, consistencyProofs). Their proof tables number leaves from
# 1; the indices below are converted to RFC 9162's 0-based leaf_index.
LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
NODES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
INCLUSION = [  # (leaf_index, tree_size, proof)
    (0, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (5, 8, ["bc1a0643", "ca854ea1", "d37ee418"]),
    (2, 3, ["fac54203"]),
    (1, 5, ["6e340b9c", "5f083f0a", "bc1a0643"]),
]
CONSISTENCY = [  # (old_size, new_size, proof)
    (1, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (6, 8, ["0ebc5d34", "ca854ea1", "d37ee418"]),
    (2, 5, ["5f083f0a", "bc1a0643"]),
    (6, 7, ["0ebc5d34", "b08693ec", "d37ee418"]),
]


def kat_node(level: int, index: int) -> bytes:
    return bytes.fromhex(NODES[level][index])


def expand(prefixes: list[str]) -> tuple[bytes, ...]:
    """Look the vectors' proof hashes up among the published node hashes by their prefix."""
    everything = [h for level in NODES for h in level]
    return tuple(bytes.fromhex(next(h for h in everything if h.startswith(p))) for p in prefixes)


def test_empty_root_and_hash_prefixes() -> None:
    assert ROOTS[0] == merkle.EMPTY_ROOT
    assert merkle.leaf_hash(b"") == ROOTS[1]
    assert merkle.node_hash(kat_node(0, 0), kat_node(0, 1)) == kat_node(1, 0)


@pytest.mark.parametrize("size", range(9))
def test_known_roots(size: int) -> None:
    hashes = [merkle.leaf_hash(x) for x in LEAVES[:size]]
    assert merkle.root_from_leaf_hashes(hashes) == ROOTS[size]
    assert merkle.root_from_node_getter(size, kat_node) == ROOTS[size]


def test_known_node_hashes() -> None:
    for level, row in enumerate(NODES):
        for index in range(len(row)):
            width = 1 << level
            leaves = LEAVES[index * width : (index + 1) * width]
            want = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
            assert want == kat_node(level, index)


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    expected = expand(proof)
    assert merkle.inclusion_proof(index, size, kat_node) == expected
    leaf = merkle.leaf_hash(LEAVES[index])
    merkle.verify_inclusion(
        leaf_hash=leaf, index=index, size=size, proof=expected, root=ROOTS[size]
    )
    # The corruptions of transparency-dev/merkle's verifierCheck must all fail.
    probes = [(index - 1, size), (index + 1, size), (index ^ 2, size), (index, size * 2)]
    for bad_index, bad_size in [*probes, (index, size // 2)]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(
                leaf_hash=leaf, index=bad_index, size=bad_size, proof=expected, root=ROOTS[size]
            )


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_known_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    expected = expand(proof)
    assert merkle.consistency_proof(old, new, kat_node) == expected
    merkle.verify_consistency(
        old_size=old, new_size=new, old_root=ROOTS[old], new_root=ROOTS[new], proof=expected
    )
    probes = [(old - 1, new), (old + 1, new), (old ^ 2, new), (old, new * 2), (old, new // 2)]
    for bad_old, bad_new in probes:
        with pytest.raises(ProofError):
            merkle.verify_consistency(
                old_size=bad_old,
                new_size=bad_new,
                old_root=ROOTS[old],
                new_root=ROOTS[new],
                proof=expected,
            )


def test_trivial_consistency_cases() -> None:
    some, other = ROOTS[3], ROOTS[4]
    merkle.verify_consistency(old_size=0, new_size=5, old_root=ROOTS[0], new_root=some, proof=())
    merkle.verify_consistency(old_size=3, new_size=3, old_root=some, new_root=some, proof=())
    bad = [
        (0, 5, some, other, ()),  # a size-0 tree has only the empty root
        (3, 3, some, other, ()),  # one size, two roots
        (3, 3, some, some, (some,)),  # nothing to prove, yet a proof
        (0, 5, ROOTS[0], other, (some,)),
        (4, 3, other, some, ()),  # time travel
        (2, 5, ROOTS[2], ROOTS[5], ()),  # empty proof for a real extension
    ]
    for old, new, old_root, new_root, proof in bad:
        with pytest.raises(ProofError):
            merkle.verify_consistency(
                old_size=old, new_size=new, old_root=old_root, new_root=new_root, proof=proof
            )


def test_wrong_length_hashes_are_proof_errors() -> None:
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaf_hash=b"", index=0, size=1, proof=(), root=ROOTS[1])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaf_hash=ROOTS[1], index=0, size=1, proof=(), root=b"x")


def test_impossible_proof_requests_are_input_errors() -> None:
    for index, size in [(0, 0), (3, 3), (-1, 4)]:
        with pytest.raises(InputError):
            merkle.inclusion_proof(index, size, kat_node)
    for old, new in [(4, 3), (-1, 2)]:
        with pytest.raises(InputError):
            merkle.consistency_proof(old, new, kat_node)


# -- properties against the RFC's recursive definitions ---------------------------------------


def mth(hashes: tuple[bytes, ...]) -> bytes:
    """MTH exactly as RFC 9162 §2.1.1 defines it, recursively."""
    if not hashes:
        return merkle.EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return merkle.node_hash(mth(hashes[:k]), mth(hashes[k:]))


def path(m: int, hashes: tuple[bytes, ...]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1, recursively."""
    if len(hashes) == 1:
        return []
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    if m < k:
        return [*path(m, hashes[:k]), mth(hashes[k:])]
    return [*path(m - k, hashes[k:]), mth(hashes[:k])]


def subproof(m: int, hashes: tuple[bytes, ...], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 §2.1.4.1, recursively."""
    if m == len(hashes):
        return [] if whole else [mth(hashes)]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    if m <= k:
        return [*subproof(m, hashes[:k], whole), mth(hashes[k:])]
    return [*subproof(m - k, hashes[k:], False), mth(hashes[:k])]


def tree(size: int) -> tuple[tuple[bytes, ...], Callable[[int, int], bytes]]:
    hashes = tuple(merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size))

    @cache
    def node(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, "the prover asked for an incomplete subtree"
        return mth(hashes[index << level : (index + 1) << level])

    return hashes, node


def flip(proof: tuple[bytes, ...], i: int) -> tuple[bytes, ...]:
    return (*proof[:i], bytes([proof[i][0] ^ 0x10]) + proof[i][1:], *proof[i + 1 :])


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=130))
def test_every_inclusion_proof_verifies_and_every_mutation_fails(size: int) -> None:
    hashes, node = tree(size)
    root = mth(hashes)
    assert merkle.root_from_node_getter(size, node) == root
    assert merkle.root_from_leaf_hashes(hashes) == root
    for index in range(size):
        proof = merkle.inclusion_proof(index, size, node)
        assert list(proof) == path(index, hashes)
        merkle.verify_inclusion(
            leaf_hash=hashes[index], index=index, size=size, proof=proof, root=root
        )
        bad = [(hashes[index], i, proof, root) for i in (index - 1, index + 1, index ^ 2)]
        bad += [(merkle.leaf_hash(b"other"), index, proof, root)]
        bad += [(hashes[index], index, proof, merkle.EMPTY_ROOT)]
        bad += [(hashes[index], index, (*proof, root), root)]
        bad += [(hashes[index], index, (root, *proof), root)]
        bad += [(hashes[index], index, flip(proof, i), root) for i in range(len(proof))]
        if proof:
            bad += [(hashes[index], index, proof[:-1], root)]
        for leaf, i, p, r in bad:
            if (leaf, i, p, r) == (hashes[index], index, proof, root):
                continue
            with pytest.raises(ProofError):
                merkle.verify_inclusion(leaf_hash=leaf, index=i, size=size, proof=p, root=r)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=70))
def test_every_consistency_proof_verifies_and_every_mutation_fails(new: int) -> None:
    hashes, node = tree(new)
    new_root = mth(hashes)
    for old in range(new + 1):
        old_root = mth(hashes[:old])
        proof = merkle.consistency_proof(old, new, node)
        assert list(proof) == ([] if old in (0, new) else subproof(old, hashes, True))
        merkle.verify_consistency(
            old_size=old, new_size=new, old_root=old_root, new_root=new_root, proof=proof
        )
        bad = [(old_root, new_root, (*proof, new_root)), (old_root, new_root, (old_root, *proof))]
        bad += [(merkle.leaf_hash(b"x"), new_root, proof)]
        if old:  # the empty tree is consistent with every tree, whatever its root
            bad += [(old_root, merkle.leaf_hash(b"x"), proof)]
        bad += [(old_root, new_root, flip(proof, i)) for i in range(len(proof))]
        if proof:
            bad += [(old_root, new_root, proof[:-1]), (new_root, old_root, proof)]
        for o_root, n_root, p in bad:
            with pytest.raises(ProofError):
                merkle.verify_consistency(
                    old_size=old, new_size=new, old_root=o_root, new_root=n_root, proof=p
                )


@pytest.mark.parametrize("size", [2**20, 2**20 + 1, 3 * 2**19 + 12345, 2**40 - 1])
def test_proofs_make_logarithmically_many_node_lookups(size: int) -> None:
    calls: list[tuple[int, int]] = []

    def node(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size
        calls.append((level, index))
        return bytes(32)

    bound = 2 * size.bit_length() + 2
    for index in (0, size // 3, size - 1):
        calls.clear()
        merkle.inclusion_proof(index, size, node)
        assert len(calls) <= bound
    for old in (1, size // 2, size - 1):
        calls.clear()
        merkle.consistency_proof(old, size, node)
        assert len(calls) <= bound
    calls.clear()
    merkle.root_from_node_getter(size, node)
    assert len(calls) <= size.bit_length()
