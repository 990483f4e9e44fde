"""verify_log: a full recomputation catches tampering with any stored row, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.encoding import b64encode
from qward.errors import (
    FormatError,
    InputError,
    ProofError,
    QwardError,
    SignatureError,
    VerificationError,
)
from qward.tlog import merkle
from qward.tlog.audit import LogAuditReport, verify_log
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner

from .conftest import LogDatabase

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
def db(log_db: LogDatabase) -> Iterator[LogDatabase]:
    """A log of 21 entries in five checkpoints, plus one entry sequenced but not integrated."""
    with log_db.open() as store:
        n = 0
        for batch in (1, 3, 4, 6, 7):
            store.sequence([f'{{"n":{n + i}}}'.encode() for i in range(batch)])
            n += batch
            store.integrate()
            store.publish(origin=ORIGIN, signers=SIGNERS)
        store.sequence([b'{"n":"pending"}'])
    yield log_db


def audit(db: LogDatabase) -> LogAuditReport:
    with db.open() as store:
        return verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)


def tamper(db: LogDatabase, sql: str, *params: object) -> None:
    assert db.execute(sql, *params) >= 1


def test_an_honest_log_passes(db: LogDatabase) -> None:
    ticks = iter([10.0, 10.25])
    with db.open() as store:
        report = verify_log(store, origin=ORIGIN, verifiers=VERIFIERS, clock=lambda: next(ticks))
    assert report.checkpoints == 5 and report.seconds == 0.25
    assert (report.entries, report.tree_size, report.trusted) == (22, 21, 0)


def test_a_changed_entry_is_caught_by_index(db: LogDatabase) -> None:
    tamper(db, "UPDATE entries SET data = ? WHERE idx = 13", b'{"n":1300}')
    with pytest.raises(VerificationError, match="entry 13"):
        audit(db)


def test_a_changed_pending_entry_is_caught(db: LogDatabase) -> None:
    tamper(db, "UPDATE entries SET data = ? WHERE idx = 21", b'{"n":"other"}')
    with pytest.raises(VerificationError, match="entry 21"):
        audit(db)


def test_an_entry_rewritten_with_its_leaf_hash_is_caught_by_the_nodes(db: LogDatabase) -> None:
    forged = b'{"n":1300}'
    tamper(
        db,
        "UPDATE entries SET data = ?, leaf_hash = ? WHERE idx = 13",
        forged,
        merkle.leaf_hash(forged),
    )
    with pytest.raises(VerificationError, match=r"node \(1, 6\) differs"):
        audit(db)


def test_a_fully_rewritten_tree_is_caught_by_the_signed_checkpoints(db: LogDatabase) -> None:
    # The attacker changes an entry and rebuilds every derived row so that the stored tree is
    # self-consistent; only the signed checkpoints still remember the old roots.
    forged = b'{"n":1300}'
    tamper(
        db,
        "UPDATE entries SET data = ?, leaf_hash = ? WHERE idx = 13",
        forged,
        merkle.leaf_hash(forged),
    )
    tamper(db, "DELETE FROM nodes")
    tamper(db, "UPDATE meta SET value = 0 WHERE key = 'integrated_size'")
    with db.open() as store:
        store.integrate()
    with pytest.raises(ProofError, match="checkpoint at size 14: root differs"):
        audit(db)


def test_a_changed_node_row_is_caught(db: LogDatabase) -> None:
    tamper(db, "UPDATE nodes SET hash = ? WHERE level = 2 AND idx = 1", bytes(32))
    with pytest.raises(VerificationError, match=r"node \(2, 1\) differs"):
        audit(db)


def test_a_missing_or_extra_node_row_is_caught(db: LogDatabase) -> None:
    tamper(db, "DELETE FROM nodes WHERE level = 1 AND idx = 3")
    with pytest.raises(VerificationError, match=r"node \(1, 3\) is missing"):
        audit(db)
    tamper(db, "INSERT INTO nodes VALUES (1, 3, ?), (7, 0, ?)", bytes(32), bytes(32))
    with pytest.raises(VerificationError, match=r"node \(1, 3\) differs"):
        audit(db)
    tamper(db, "DELETE FROM nodes WHERE level = 1 AND idx = 3")
    tamper(db, "DELETE FROM nodes WHERE level = 4")
    with pytest.raises(VerificationError, match=r"node \(1, 3\) is missing"):
        audit(db)


def test_an_extra_node_row_is_caught(db: LogDatabase) -> None:
    tamper(db, "INSERT INTO nodes VALUES (9, 0, ?)", bytes(32))
    with pytest.raises(VerificationError, match=r"node \(9, 0\) is outside the tree"):
        audit(db)


def test_a_missing_entry_is_caught(db: LogDatabase) -> None:
    tamper(db, "DELETE FROM entries WHERE idx = 5")
    with pytest.raises(VerificationError, match="entry 5 is missing"):
        audit(db)


def test_a_changed_checkpoint_is_caught(db: LogDatabase) -> None:
    (note,) = db.fetchone("SELECT note FROM checkpoints WHERE seq = 3")
    forged = bytes(note).replace(b"\n8\n", b"\n9\n", 1)
    tamper(db, "UPDATE checkpoints SET note = ? WHERE seq = 3", forged)
    with pytest.raises(SignatureError, match="checkpoint #3"):
        audit(db)
    tamper(db, "UPDATE checkpoints SET note = ? WHERE seq = 3", b"garbage")
    with pytest.raises(FormatError, match="checkpoint #3"):
        audit(db)


def test_a_stale_checkpoint_reordering_is_caught(db: LogDatabase) -> None:
    tamper(db, "UPDATE checkpoints SET seq = 9 WHERE seq = 2")
    with pytest.raises(VerificationError, match="follows one at size"):
        audit(db)


def test_wrong_origin_and_untrusted_keys(db: LogDatabase) -> None:
    with db.open() as store:
        with pytest.raises(VerificationError, match="is for log"):
            verify_log(store, origin="other.example/log", verifiers=VERIFIERS)
        stranger = Ed25519NoteSigner(
            name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.generate()
        ).verifier()
        with pytest.raises(SignatureError, match="checkpoint #1"):
            verify_log(store, origin=ORIGIN, verifiers=[*VERIFIERS, stranger])
        with pytest.raises(InputError):
            verify_log(store, origin=ORIGIN, verifiers=[])


def test_a_changed_signer_list_is_caught(db: LogDatabase) -> None:
    tamper(db, "UPDATE checkpoints SET signers = signers || 'x' WHERE seq = 2")
    with pytest.raises(VerificationError, match="checkpoint #2: its stored signer list"):
        audit(db)


def test_a_deleted_checkpoint_is_caught(db: LogDatabase) -> None:
    tamper(db, "DELETE FROM checkpoints WHERE seq = 4")
    with pytest.raises(VerificationError, match="not dense: checkpoint #4 is stored as number 5"):
        audit(db)


def test_a_signature_by_an_unknown_key_is_caught(db: LogDatabase) -> None:
    (note,) = db.fetchone("SELECT note FROM checkpoints WHERE seq = 5")
    line = f"\u2014 stranger.example {b64encode(bytes(4) + bytes(64))}\n".encode()
    tamper(db, "UPDATE checkpoints SET note = ? WHERE seq = 5", bytes(note) + line)
    with pytest.raises(VerificationError, match="#5 carries a signature by unknown 'stranger"):
        audit(db)


def test_an_entry_with_a_negative_index_is_caught(db: LogDatabase) -> None:
    entry = b'{"n":-1}'
    tamper(db, "INSERT INTO entries VALUES (-1, ?, ?)", entry, merkle.leaf_hash(entry))
    with pytest.raises(VerificationError, match="entry -1 is outside the log"):
        audit(db)


_KEYS = {"entries": ("idx",), "nodes": ("level", "idx"), "checkpoints": ("seq",), "meta": ("key",)}
_COLUMNS = {
    "entries": ("idx", "data", "leaf_hash"),
    "nodes": ("level", "idx", "hash"),
    "checkpoints": ("seq", "signers", "note"),
    # The schema row is checked when the store opens; the key names are the schema's own.
    "meta": ("value",),
}


def _changed(column: str, value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        return raw[:-1] + bytes([raw[-1] ^ 0x01])
    if isinstance(value, str):
        return value + "x"
    return value + (20 if column == "level" else 1000)


def _rows(run: Any, table: str) -> list[dict[str, Any]]:
    columns = _COLUMNS[table] + tuple(k for k in _KEYS[table] if k not in _COLUMNS[table])
    cursor = run(f"SELECT {', '.join(columns)} FROM {table}")
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def test_changing_any_column_of_any_row_is_caught(db: LogDatabase) -> None:
    with db.raw() as run, db.open() as store:
        checked = 0
        for table, columns in _COLUMNS.items():
            for row in _rows(run, table):
                if table == "meta" and row["key"] != "integrated_size":
                    continue
                where = " AND ".join(f"{k} = ?" for k in _KEYS[table])
                for column in columns:
                    new = _changed(column, row[column])
                    keys = [new if k == column else row[k] for k in _KEYS[table]]
                    run(
                        f"UPDATE {table} SET {column} = ? WHERE {where}",
                        new,
                        *(row[k] for k in _KEYS[table]),
                    )
                    with pytest.raises(QwardError):
                        verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)
                    run(f"UPDATE {table} SET {column} = ? WHERE {where}", row[column], *keys)
                    checked += 1
        assert checked == 22 * 3 + 18 * 3 + 5 * 3 + 1
        verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)


def test_deleting_any_row_is_caught_but_the_unsigned_tail(db: LogDatabase) -> None:
    """Every row but two: the newest checkpoint and the entries no checkpoint covers yet.

    Nothing signed commits to those two, so deleting them is indistinguishable from a log that
    never had them; witnesses' cosignatures are what pin the newest checkpoint.
    """
    with db.raw() as run, db.open() as store:
        for table in ("entries", "nodes", "checkpoints"):
            for row in _rows(run, table):
                if (table, row.get("idx"), row.get("seq")) in {
                    ("entries", 21, None),
                    ("checkpoints", None, 5),
                }:
                    continue
                where = " AND ".join(f"{k} = ?" for k in _KEYS[table])
                run(f"DELETE FROM {table} WHERE {where}", *(row[k] for k in _KEYS[table]))
                with pytest.raises(QwardError):
                    verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)
                names = ", ".join(row)
                marks = ", ".join("?" * len(row))
                run(f"INSERT INTO {table} ({names}) VALUES ({marks})", *row.values())
        verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)
