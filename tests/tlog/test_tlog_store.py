"""Log stores, on SQLite and PostgreSQL: the three phases, proofs, durability, failure."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.errors import AuditError, InputError, VerificationError
from qward.tlog import merkle
from qward.tlog.audit import verify_log
from qward.tlog.backend import LogBackend
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import (
    Ed25519NoteSigner,
    MLDSA44NoteSigner,
    NoteSigner,
    NoteVerifier,
    open_note,
)
from qward.tlog.store import MAX_ENTRY_BYTES, SQLiteLogStore

from .conftest import LogDatabase, PostgresServer

ORIGIN = "log.example/store"
SIGNERS = (
    Ed25519NoteSigner(
        name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    ),
    MLDSA44NoteSigner(name=ORIGIN, private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(bytes(32))),
)
VERIFIERS = tuple(s.verifier() for s in SIGNERS)


def entry(i: int) -> bytes:
    return f'{{"entry":{i}}}'.encode()


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    return tmp_path / "log.sqlite"


@pytest.fixture()
def store(log_db: LogDatabase) -> Iterator[LogBackend]:
    with log_db.open() as opened:
        yield opened


def grow(store: LogBackend, batches: list[int]) -> list[bytes]:
    """Sequence, integrate and publish one checkpoint per batch; returns the notes."""
    notes = []
    for count in batches:
        first = store.sequenced_size()
        assert store.sequence([entry(first + i) for i in range(count)]) == list(
            range(first, first + count)
        )
        store.integrate()
        notes.append(store.publish(origin=ORIGIN, signers=SIGNERS))
    return notes


def checkpoint_of(note: bytes) -> Checkpoint:
    return Checkpoint.from_body(open_note(note, VERIFIERS)[0])


def test_phases_round_trip(store: LogBackend) -> None:
    assert (store.size(), store.sequenced_size(), store.latest_checkpoint()) == (0, 0, None)
    assert store.sequence([]) == []
    assert store.sequence([entry(0), entry(1), entry(2)]) == [0, 1, 2]
    assert (store.size(), store.sequenced_size()) == (0, 3)
    size, root = store.integrate()
    want = merkle.root_from_leaf_hashes([merkle.leaf_hash(entry(i)) for i in range(3)])
    assert (size, root) == (3, want) == (store.size(), root)
    note = store.publish(origin=ORIGIN, signers=SIGNERS)
    assert checkpoint_of(note) == Checkpoint(origin=ORIGIN, size=3, root_hash=want)
    assert store.latest_checkpoint() == note
    assert store.entry(1) == entry(1)
    assert store.node(0, 2) == merkle.leaf_hash(entry(2))
    assert store.node(1, 0) == merkle.node_hash(store.node(0, 0), store.node(0, 1))


def test_publish_can_integrate_in_the_same_transaction(store: LogBackend) -> None:
    store.sequence([entry(i) for i in range(5)])
    assert store.size() == 0
    note = store.publish(origin=ORIGIN, signers=SIGNERS, integrate=True)
    want = merkle.root_from_leaf_hashes([merkle.leaf_hash(entry(i)) for i in range(5)])
    assert checkpoint_of(note) == Checkpoint(origin=ORIGIN, size=5, root_hash=want)
    assert store.size() == 5
    # Nothing new: the same checkpoint comes back rather than another signature.
    assert store.publish(origin=ORIGIN, signers=SIGNERS, integrate=True) == note


def test_nothing_new_reuses_the_latest_checkpoint(store: LogBackend) -> None:
    first = grow(store, [2])[0]
    store.integrate()
    assert store.publish(origin=ORIGIN, signers=SIGNERS) == first
    # A different signer set is a reason to sign again, even for the same tree.
    again = store.publish(origin=ORIGIN, signers=SIGNERS[:1])
    assert again != first and checkpoint_of(first) == Checkpoint.from_body(
        open_note(again, VERIFIERS[:1])[0]
    )
    assert list(store.checkpoints()) == [first, again]


def test_empty_log_publishes_the_empty_tree(store: LogBackend) -> None:
    assert store.integrate() == (0, merkle.EMPTY_ROOT)
    assert checkpoint_of(store.publish(origin=ORIGIN, signers=SIGNERS)).size == 0
    assert verify_log(store, origin=ORIGIN, verifiers=VERIFIERS).checkpoints == 1


def test_incremental_integration_stores_exactly_the_complete_subtrees(
    store: LogBackend,
) -> None:
    sizes = [1, 1, 2, 3, 5, 8, 13, 1, 30, 64, 2]
    grow(store, sizes)
    total = sum(sizes)
    hashes = [merkle.leaf_hash(entry(i)) for i in range(total)]
    expected = {}
    level = 1
    while (1 << level) <= total:
        width = 1 << level
        for index in range(total // width):
            leaves = hashes[index * width : (index + 1) * width]
            expected[(level, index)] = merkle.root_from_leaf_hashes(leaves)
        level += 1
    assert {(lv, i): h for lv, i, h in store.node_rows()} == expected


def test_store_proofs_verify_against_published_checkpoints(store: LogBackend) -> None:
    checkpoints = [checkpoint_of(n) for n in grow(store, [1, 4, 3, 9, 1, 16, 7])]
    for cp in checkpoints:
        for index in {0, cp.size // 2, cp.size - 1}:
            merkle.verify_inclusion(
                leaf_hash=merkle.leaf_hash(store.entry(index)),
                index=index,
                size=cp.size,
                proof=store.inclusion_proof(index, cp.size),
                root=cp.root_hash,
            )
    for old in checkpoints:
        for new in checkpoints:
            if old.size <= new.size:
                merkle.verify_consistency(
                    old_size=old.size,
                    new_size=new.size,
                    old_root=old.root_hash,
                    new_root=new.root_hash,
                    proof=store.consistency_proof(old.size, new.size),
                )


def test_out_of_range_requests_are_input_errors(store: LogBackend) -> None:
    grow(store, [5])
    store.sequence([entry(5)])  # sequenced, not yet integrated
    for call in (
        lambda: store.inclusion_proof(5, 6),
        lambda: store.inclusion_proof(5, 5),
        lambda: store.inclusion_proof(-1, 5),
        lambda: store.consistency_proof(3, 6),
        lambda: store.consistency_proof(4, 3),
        lambda: store.node(0, 5),
        lambda: store.node(3, 0),
        lambda: store.node(-1, 0),
        lambda: store.entry(6),
    ):
        with pytest.raises(InputError):
            call()
    assert store.entry(5) == entry(5)


def test_reopening_preserves_everything(log_db: LogDatabase) -> None:
    with log_db.open() as first:
        notes = grow(first, [3, 4])
        first.sequence([entry(7)])
        proof = first.inclusion_proof(2, 7)
    with log_db.open() as again:
        assert (again.size(), again.sequenced_size()) == (7, 8)
        assert list(again.checkpoints()) == notes
        assert [n for n, _, _ in again.checkpoint_rows()] == [1, 2]
        assert again.latest_checkpoint() == notes[-1]
        assert again.inclusion_proof(2, 7) == proof
        assert again.integrate()[0] == 8
        assert again.entry(7) == entry(7)
        # Integrated but not yet in a signed checkpoint: nothing pins entry 7 yet.
        with pytest.raises(VerificationError, match="covered by no signed checkpoint"):
            verify_log(again, origin=ORIGIN, verifiers=VERIFIERS)
        again.publish(origin=ORIGIN, signers=SIGNERS)
        report = verify_log(again, origin=ORIGIN, verifiers=VERIFIERS)
        assert (report.entries, report.tree_size, report.checkpoints) == (8, 8, 3)


def test_two_connections_to_one_log_take_turns(log_db: LogDatabase) -> None:
    # Two store objects are two connections (as two processes would have): each phase is
    # serialized by the database's own lock, so indices never collide.
    with log_db.open() as one, log_db.open() as two:
        results: list[list[int]] = []

        def worker(store: LogBackend, n: int) -> None:
            for i in range(20):
                results.append(store.sequence([entry(100 * n + i)] * 3))
                store.integrate()

        threads = [threading.Thread(target=worker, args=(s, n)) for n, s in enumerate([one, two])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(i for batch in results for i in batch) == list(range(120))
        grow(one, [1])
        grow(two, [1])
        assert verify_log(two, origin=ORIGIN, verifiers=VERIFIERS).tree_size == 122


def test_sqlite_is_durable_by_configuration(path: Path) -> None:
    with SQLiteLogStore.open(path) as store:
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        level = "PRAGMA synchronous"
        # A durable commit is made with FULL (an fsync of the write-ahead log); the rest with
        # NORMAL, flushed by the next FULL one.
        with store._write(durable=True):
            assert store._db.execute(level).fetchone()[0] == 2  # FULL
        with store._write(durable=False):
            assert store._db.execute(level).fetchone()[0] == 1  # NORMAL
        assert store._db.execute(level).fetchone()[0] == 1
        with pytest.raises(RuntimeError), store._write(durable=True):
            raise RuntimeError("a failed durable transaction leaves the resting level")
        assert store._db.execute(level).fetchone()[0] == 1


def test_postgres_is_durable_by_configuration(postgres_server: PostgresServer) -> None:
    from qward.tlog.pg_store import PostgresLogStore

    with PostgresLogStore.open(postgres_server.dsn()) as store:
        settings = {
            name: store._rows(f"SHOW {name}")[0][0]
            for name in ("fsync", "synchronous_commit", "transaction_isolation")
        }
        assert settings == {
            "fsync": "on",
            "synchronous_commit": "on",
            "transaction_isolation": "read committed",
        }
        store._run("DROP TABLE entries, nodes, checkpoints, meta")


def test_entry_limits(store: LogBackend) -> None:
    assert store.sequence([b"x" * MAX_ENTRY_BYTES]) == [0]
    with pytest.raises(AuditError, match="refused"):
        store.sequence([b"ok", b"x" * (MAX_ENTRY_BYTES + 1)])
    with pytest.raises(AuditError):
        store.sequence(["text"])  # type: ignore[list-item]
    assert store.sequenced_size() == 1


@pytest.mark.parametrize(
    ("table", "phase"),
    [("entries", "sequencing"), ("nodes", "integrating"), ("checkpoints", "publishing")],
)
def test_database_failures_fail_closed(log_db: LogDatabase, table: str, phase: str) -> None:
    with log_db.open() as store:
        grow(store, [1])
        store.sequence([entry(1)])
        log_db.fail_inserts(table, "disk full")
        with pytest.raises(AuditError, match=f"{phase}.*disk full"):
            store.sequence([entry(2)])
            store.integrate()
            store.publish(origin=ORIGIN, signers=SIGNERS)
        # The failed transaction left nothing behind, and the store still answers.
        assert store.sequenced_size() == (2 if table == "entries" else 3)
        assert store.size() == (3 if table == "checkpoints" else 1)
        assert len(list(store.checkpoints())) == 1


def test_a_closed_store_raises_audit_error(log_db: LogDatabase) -> None:
    store = log_db.open()
    store.close()
    with pytest.raises(AuditError, match="sequencing"):
        store.sequence([entry(0)])


def test_opening_garbage_is_an_audit_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not an SQLite database, not even slightly" * 10)
    with pytest.raises(AuditError, match="not-a-db"):
        SQLiteLogStore.open(bad)
    with pytest.raises(AuditError):
        SQLiteLogStore.open(tmp_path / "missing-dir" / "log.sqlite")


def test_an_unreachable_postgres_is_an_audit_error(tmp_path: Path) -> None:
    pg_store = pytest.importorskip("qward.tlog.pg_store")
    with pytest.raises(AuditError, match="opening the PostgreSQL log failed"):
        pg_store.PostgresLogStore.open(f"host={tmp_path} port=5432 connect_timeout=2")


def test_publish_refuses_another_origin(store: LogBackend) -> None:
    grow(store, [2])
    with pytest.raises(AuditError, match="holds checkpoints"):
        store.publish(origin="other.example/log", signers=SIGNERS)


def test_publish_refuses_to_sign_a_tree_inconsistent_with_its_past(
    store: LogBackend, log_db: LogDatabase
) -> None:
    grow(store, [4])
    log_db.execute("UPDATE nodes SET hash = ? WHERE level = 2 AND idx = 0", bytes(32))
    store.sequence([entry(4)])
    store.integrate()
    with pytest.raises(AuditError, match="inconsistent with the published checkpoint at size 4"):
        store.publish(origin=ORIGIN, signers=SIGNERS)
    assert len(list(store.checkpoints())) == 1


def test_concurrent_sequencing_assigns_unique_consecutive_indices(store: LogBackend) -> None:
    results: list[list[int]] = []

    def worker(n: int) -> None:
        for i in range(10):
            results.append(store.sequence([entry(1000 * n + i), entry(1000 * n + i + 500)]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    indices = sorted(i for batch in results for i in batch)
    assert indices == list(range(80))
    assert all(batch[1] == batch[0] + 1 for batch in results)
    assert store.integrate()[0] == 80


class MeddlingSigner:
    """A real signer that, while it signs (outside any transaction), lets ``meddle`` change the
    log, the way another writer could between a publish's reads and its commit."""

    def __init__(self, signer: NoteSigner, meddle: Callable[[], None], times: int) -> None:
        self._signer = signer
        self._meddle = meddle
        self.left = times

    @property
    def name(self) -> str:
        return self._signer.name

    @property
    def key_id(self) -> bytes:
        return self._signer.key_id

    @property
    def algorithm(self) -> int:
        return self._signer.algorithm

    def sign(self, message: bytes) -> bytes:
        if self.left > 0:
            self.left -= 1
            self._meddle()
        return self._signer.sign(message)

    def verifier(self) -> NoteVerifier:
        return self._signer.verifier()


def test_a_publish_starts_again_if_the_tree_grew_while_it_signed(store: LogBackend) -> None:
    grow(store, [3])

    def integrate_one_more() -> None:
        store.sequence([entry(store.sequenced_size())])
        store.integrate()

    meddling = MeddlingSigner(SIGNERS[0], integrate_one_more, times=1)
    store.sequence([entry(3)])
    note = store.publish(origin=ORIGIN, signers=(meddling, SIGNERS[1]), integrate=True)
    # The first signature was for size 4; the tree had grown to 5 by the time it was stored,
    # so nothing was stored and the checkpoint was made again for the larger tree.
    assert checkpoint_of(note).size == 5 == store.size() and meddling.left == 0
    assert [checkpoint_of(n).size for n in store.checkpoints()] == [3, 5]
    verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)


def test_a_publish_gives_up_if_the_log_keeps_changing_while_it_signs(
    store: LogBackend,
) -> None:
    grow(store, [2])

    def publish_another() -> None:
        store.sequence([entry(store.sequenced_size())])
        store.publish(origin=ORIGIN, signers=SIGNERS, integrate=True)
        store.sequence([entry(store.sequenced_size())])

    meddling = MeddlingSigner(SIGNERS[0], publish_another, times=10)
    store.sequence([entry(2)])
    with pytest.raises(AuditError, match="kept changing"):
        store.publish(origin=ORIGIN, signers=(meddling, SIGNERS[1]), integrate=True)
    # Only the meddler's own checkpoints were stored; the log is whole and pinned.
    assert [checkpoint_of(n).size for n in store.checkpoints()] == [2, 4, 6, 8]
    verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)


def test_a_publish_leaves_no_tree_beyond_its_checkpoint_when_signing_fails(
    store: LogBackend,
) -> None:
    grow(store, [2])
    store.sequence([entry(2), entry(3)])

    def fail() -> None:
        raise OSError("the signing key is unavailable")

    with pytest.raises(OSError):
        store.publish(
            origin=ORIGIN, signers=(MeddlingSigner(SIGNERS[0], fail, 1), SIGNERS[1]), integrate=True
        )
    # The new leaves were not integrated on their own: the tree still ends at its checkpoint,
    # so the audit passes, and the next publish covers them.
    assert store.size() == 2
    verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)
    assert checkpoint_of(store.publish(origin=ORIGIN, signers=SIGNERS, integrate=True)).size == 4
