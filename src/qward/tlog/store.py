"""Durable transparency-log storage on SQLite, the default backend.

The phase logic, proofs and reads live in ``sql_store.SQLLogStore``; this module binds them to one
SQLite file. The database runs in WAL mode; a durable commit runs with ``synchronous=FULL``, so it
survives power loss at the cost of one fsync of the write-ahead log, however many entries it
carries (commits that need no flush of their own run with ``NORMAL``, and the next FULL one
flushes them). ``BEGIN IMMEDIATE`` takes SQLite's single write lock, which serializes writers
across processes as well as threads. Every SQLite failure surfaces as ``AuditError``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from qward.errors import AuditError
from qward.tlog.backend import MAX_ENTRY_BYTES
from qward.tlog.sql_store import SCHEMA_VERSION, Row, SQLLogStore

__all__ = ["MAX_ENTRY_BYTES", "SQLiteLogStore"]

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
    f"INSERT OR IGNORE INTO meta VALUES ('schema', {SCHEMA_VERSION})",  # noqa: S608 (a constant)
    "INSERT OR IGNORE INTO meta VALUES ('integrated_size', 0)",
)


class SQLiteLogStore(SQLLogStore):
    """A transparency log in one SQLite file. Build it with ``SQLiteLogStore.open``."""

    driver_errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)

    def __init__(self, *, connection: sqlite3.Connection) -> None:
        super().__init__()
        self._db = connection

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
                # The resting setting is NORMAL: most commits need no flush of their own (see
                # ``_write``), and a durable one switches to FULL for itself.
                db.execute("PRAGMA synchronous=NORMAL")
            with store._transaction(f"creating the log schema in {path}"):
                for statement in _SCHEMA:
                    db.execute(statement)
                version = store._meta("schema")
            if mode not in ("wal", "memory") or version != SCHEMA_VERSION:
                raise AuditError(f"log database {path}: journal mode {mode}, schema {version}")
        except BaseException:
            db.close()
            raise
        return store

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._db.execute(sql, params).fetchall()

    def _run(self, sql: str, params: Sequence[object] = ()) -> None:
        self._db.execute(sql, params)

    def _insert(
        self, table: str, columns: tuple[str, ...], rows: Sequence[Sequence[object]]
    ) -> None:
        marks = ", ".join("?" * len(columns))
        # ``table`` and ``columns`` are the store's own constants, never caller input.
        statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
        self._db.executemany(statement, rows)

    @contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[None]:
        # In WAL mode, synchronous=NORMAL commits to the log file without an fsync: the commit
        # survives a crash of this process, and the next FULL commit's fsync covers it.
        if durable:
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _close(self) -> None:
        self._db.close()
