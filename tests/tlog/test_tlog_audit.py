"""verify_log: a full recomputation catches every kind of tampering with the stored log."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.errors import (
    FormatError,
    InputError,
    ProofError,
    SignatureError,
    VerificationError,
)
from qward.tlog import merkle
from qward.tlog.audit import LogAuditReport, verify_log
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner
from qward.tlog.store import SQLiteLogStore

ORIGIN = "log.example/audit"
SIGNERS = (
    Ed25519NoteSigner(
        name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    ),
    MLDSA44NoteSigner(
        name=ORIGIN, private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(bytes(range(32)))
    ),
)
VERIFIERS = tuple(s.verifier() for s in SIGNERS)


@pytest.fixture()
def path(tmp_path: Path) -> Iterator[Path]:
    """A log of 21 entries in five checkpoints, plus one entry sequenced but not integrated."""
    db = tmp_path / "log.sqlite"
    with SQLiteLogStore.open(db) as store:
        n = 0
        for batch in (1, 3, 4, 6, 7):
            store.sequence([f'{{"n":{n + i}}}'.encode() for i in range(batch)])
            n += batch
            store.integrate()
            store.publish(origin=ORIGIN, signers=SIGNERS)
        store.sequence([b'{"n":"pending"}'])
    yield db


def audit(path: Path) -> LogAuditReport:
    with SQLiteLogStore.open(path) as store:
        return verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)


def tamper(path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(path) as raw:
        assert raw.execute(sql, params).rowcount >= 1


def test_an_honest_log_passes(path: Path) -> None:
    ticks = iter([10.0, 10.25])
    with SQLiteLogStore.open(path) as store:
        report = verify_log(store, origin=ORIGIN, verifiers=VERIFIERS, clock=lambda: next(ticks))
    assert report == LogAuditReport(entries=22, tree_size=21, checkpoints=5, seconds=0.25)


def test_a_changed_entry_is_caught_by_index(path: Path) -> None:
    tamper(path, "UPDATE entries SET data = ? WHERE idx = 13", b'{"n":1300}')
    with pytest.raises(VerificationError, match="entry 13"):
        audit(path)


def test_a_changed_pending_entry_is_caught(path: Path) -> None:
    tamper(path, "UPDATE entries SET data = ? WHERE idx = 21", b'{"n":"other"}')
    with pytest.raises(VerificationError, match="entry 21"):
        audit(path)


def test_an_entry_rewritten_with_its_leaf_hash_is_caught_by_the_nodes(path: Path) -> None:
    forged = b'{"n":1300}'
    tamper(
        path,
        "UPDATE entries SET data = ?, leaf_hash = ? WHERE idx = 13",
        forged,
        merkle.leaf_hash(forged),
    )
    with pytest.raises(VerificationError, match=r"node \(1, 6\) differs"):
        audit(path)


def test_a_fully_rewritten_tree_is_caught_by_the_signed_checkpoints(path: Path) -> None:
    # The attacker changes an entry and rebuilds every derived row so that the stored tree is
    # self-consistent; only the signed checkpoints still remember the old roots.
    forged = b'{"n":1300}'
    tamper(
        path,
        "UPDATE entries SET data = ?, leaf_hash = ? WHERE idx = 13",
        forged,
        merkle.leaf_hash(forged),
    )
    tamper(path, "DELETE FROM nodes")
    tamper(path, "UPDATE meta SET value = 0 WHERE key = 'integrated_size'")
    with SQLiteLogStore.open(path) as store:
        store.integrate()
    with pytest.raises(ProofError, match="checkpoint at size 14: root differs"):
        audit(path)


def test_a_changed_node_row_is_caught(path: Path) -> None:
    tamper(path, "UPDATE nodes SET hash = ? WHERE level = 2 AND idx = 1", bytes(32))
    with pytest.raises(VerificationError, match=r"node \(2, 1\) differs"):
        audit(path)


def test_a_missing_or_extra_node_row_is_caught(path: Path) -> None:
    tamper(path, "DELETE FROM nodes WHERE level = 1 AND idx = 3")
    with pytest.raises(VerificationError, match=r"node \(1, 3\) is missing"):
        audit(path)
    tamper(path, "INSERT INTO nodes VALUES (1, 3, ?), (7, 0, ?)", bytes(32), bytes(32))
    with pytest.raises(VerificationError, match=r"node \(1, 3\) differs"):
        audit(path)
    tamper(path, "DELETE FROM nodes WHERE level = 1 AND idx = 3")
    tamper(path, "DELETE FROM nodes WHERE level = 4")
    with pytest.raises(VerificationError, match=r"node \(1, 3\) is missing"):
        audit(path)


def test_an_extra_node_row_is_caught(path: Path) -> None:
    tamper(path, "INSERT INTO nodes VALUES (9, 0, ?)", bytes(32))
    with pytest.raises(VerificationError, match=r"node \(9, 0\) is outside the tree"):
        audit(path)


def test_a_missing_entry_is_caught(path: Path) -> None:
    tamper(path, "DELETE FROM entries WHERE idx = 5")
    with pytest.raises(VerificationError, match="entry 5 is missing"):
        audit(path)


def test_a_changed_checkpoint_is_caught(path: Path) -> None:
    with sqlite3.connect(path) as raw:
        (note,) = raw.execute("SELECT note FROM checkpoints WHERE seq = 3").fetchone()
    forged = bytes(note).replace(b"\n8\n", b"\n9\n", 1)
    tamper(path, "UPDATE checkpoints SET note = ? WHERE seq = 3", forged)
    with pytest.raises(SignatureError, match="checkpoint #3"):
        audit(path)
    tamper(path, "UPDATE checkpoints SET note = ? WHERE seq = 3", b"garbage")
    with pytest.raises(FormatError, match="checkpoint #3"):
        audit(path)


def test_a_stale_checkpoint_reordering_is_caught(path: Path) -> None:
    tamper(path, "UPDATE checkpoints SET seq = 9 WHERE seq = 2")
    with pytest.raises(VerificationError, match="follows one at size"):
        audit(path)


def test_wrong_origin_and_untrusted_keys(path: Path) -> None:
    with SQLiteLogStore.open(path) as store:
        with pytest.raises(VerificationError, match="is for log"):
            verify_log(store, origin="other.example/log", verifiers=VERIFIERS)
        stranger = Ed25519NoteSigner(
            name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.generate()
        ).verifier()
        with pytest.raises(SignatureError, match="checkpoint #1"):
            verify_log(store, origin=ORIGIN, verifiers=[*VERIFIERS, stranger])
        with pytest.raises(InputError):
            verify_log(store, origin=ORIGIN, verifiers=[])
