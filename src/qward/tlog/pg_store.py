"""Durable transparency-log storage on PostgreSQL (psycopg 3), beside the SQLite default.

The phase logic, proofs and reads live in ``sql_store.SQLLogStore``; this module binds them to one
PostgreSQL connection. Each phase is one transaction that first takes ``LOCK TABLE meta IN
EXCLUSIVE MODE``, which serializes every writer of the log across connections and processes while
plain reads go on; statements then run at READ COMMITTED, so each sees everything committed before
the lock was granted. The session asks for ``synchronous_commit = on`` and the server must run
with ``fsync = on``: a committed phase, and so an acknowledged entry, is flushed to the server's
write-ahead log. Every psycopg failure surfaces as ``AuditError``: the log fails closed.

The tables are created in the first schema of the connection's ``search_path``, so one database
can hold several logs (``options='-c search_path=mylog'`` in the DSN).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import psycopg

from qward.errors import AuditError
from qward.tlog.sql_store import SCHEMA_VERSION, Row, SQLLogStore

__all__ = ["PostgresLogStore"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " idx BIGINT PRIMARY KEY, data BYTEA NOT NULL, leaf_hash BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS nodes ("
    " level INTEGER NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL,"
    " PRIMARY KEY (level, idx))",
    "CREATE TABLE IF NOT EXISTS checkpoints ("
    " seq BIGINT PRIMARY KEY, signers TEXT NOT NULL, note BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    f"INSERT INTO meta VALUES ('schema', {SCHEMA_VERSION}) ON CONFLICT DO NOTHING",  # noqa: S608 (a constant)
    "INSERT INTO meta VALUES ('integrated_size', 0) ON CONFLICT DO NOTHING",
)

# Creating tables races between processes opening a new log at once (CREATE TABLE IF NOT EXISTS is
# not atomic in PostgreSQL), and the meta table to lock may not exist yet: an advisory lock on a
# fixed key, held to the end of the schema transaction, serializes that step.
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7102317525551370615)"


def _placeholders(sql: str) -> str:
    # Our statements contain no literal question marks or percent signs.
    return sql.replace("?", "%s")


class PostgresLogStore(SQLLogStore):
    """A transparency log in PostgreSQL tables. Build it with ``PostgresLogStore.open``."""

    driver_errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)

    def __init__(self, *, connection: psycopg.Connection[Row]) -> None:
        super().__init__()
        self._db = connection
        self._sql: dict[str, str] = {}

    @classmethod
    def open(cls, dsn: str) -> PostgresLogStore:
        """Connect to ``dsn`` and create the log's tables if they do not exist yet.

        1. Connect in autocommit mode (phases open their own transactions) at READ COMMITTED.
        2. Require ``fsync = on`` and set ``synchronous_commit = on`` for this session.
        3. Create the schema under an advisory lock and check its version.
        """
        try:
            db = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise AuditError(f"opening the PostgreSQL log failed: {exc}") from None
        store = cls(connection=db)
        try:
            with store._guard("configuring the PostgreSQL log"):
                db.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
                db.execute("SET synchronous_commit = on")
                fsync = store._rows("SHOW fsync")[0][0]
            if fsync != "on":
                raise AuditError("PostgreSQL log: the server runs with fsync off; refusing it")
            with store._guard("creating the log schema"), db.transaction():
                db.execute(_SCHEMA_LOCK)
                for statement in _SCHEMA:
                    db.execute(statement)
                version = store._meta("schema")
            if version != SCHEMA_VERSION:
                raise AuditError(f"PostgreSQL log: schema version {version}")
        except BaseException:
            db.close()
            raise
        return store

    def _statement(self, sql: str) -> str:
        converted = self._sql.get(sql)
        if converted is None:
            converted = self._sql[sql] = _placeholders(sql)
        return converted

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._db.execute(self._statement(sql), params).fetchall()

    def _run(self, sql: str, params: Sequence[object] = ()) -> None:
        self._db.execute(self._statement(sql), params)

    def _insert(
        self, table: str, columns: tuple[str, ...], rows: Sequence[Sequence[object]]
    ) -> None:
        # COPY moves a batch in one round trip, several times faster than row-by-row INSERTs; it
        # fires the same row triggers and constraints.
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with self._db.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    @contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[None]:
        # psycopg commits when the block ends and rolls back if it raises.
        with self._db.transaction():
            if not durable:
                # An asynchronous commit: in the server's WAL, flushed by the next synchronous one.
                self._db.execute("SET LOCAL synchronous_commit = off")
            self._db.execute("LOCK TABLE meta IN EXCLUSIVE MODE")
            yield

    def _close(self) -> None:
        self._db.close()
