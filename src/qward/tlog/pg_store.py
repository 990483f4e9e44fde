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

Several processes (protected cores) may append to one log. Only one of them publishes: the holder
of the ``lease`` row, a publisher lease with a fencing epoch, granted, renewed and checked under
the same table lock as every phase and timed by the server's clock, never a core's. A lease whose
time has run out can be taken by another core, which bumps the epoch; ``publish`` with the old
epoch is then refused (``FencedError``), so a stalled or partitioned former leader can never
publish. ``notify`` wakes the other cores through ``LISTEN``/``NOTIFY`` on channel ``qward_log``,
each message prefixed by the log's schema so that logs sharing a database ignore each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import psycopg

from qward.errors import AuditError, FencedError
from qward.tlog.backend import Fence
from qward.tlog.sql_store import SCHEMA_VERSION, Row, SQLLogStore

__all__ = ["NOTIFY_CHANNEL", "PostgresLogStore"]

#: The channel cores listen on for each other's log events.
NOTIFY_CHANNEL = "qward_log"
_LEASE = "publisher"

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
    # Not part of the log's content (the audit never reads it): who may publish, until when.
    "CREATE TABLE IF NOT EXISTS lease ("
    " name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL,"
    " expires TIMESTAMPTZ NOT NULL)",
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

    def __init__(self, *, connection: psycopg.Connection[Row], dsn: str = "") -> None:
        super().__init__()
        self._db = connection
        self._sql: dict[str, str] = {}
        #: How to connect to this log again (a listener needs a connection of its own).
        self.dsn = dsn
        self._schema = ""

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
        store = cls(connection=db, dsn=dsn)
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
                store._schema = str(store._rows("SELECT current_schema()")[0][0])
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

    # -- the publisher lease -----------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The schema holding this log's tables: the prefix of its notifications."""
        return self._schema

    def acquire_lease(self, holder: str, *, ttl: float) -> Fence | None:
        """Take or renew the publisher lease for ``ttl`` seconds of the server's clock.

        1. Without a lease row, create it: ``holder`` in epoch 1.
        2. If ``holder`` holds it and it has not run out, extend it, same epoch.
        3. If it has run out (whoever held it), give it to ``holder`` in the next epoch.
        4. Otherwise another core holds it: return None.
        """
        with self._transaction("acquiring the publisher lease"):
            row = self._one(
                "SELECT holder, epoch, expires > clock_timestamp() FROM lease WHERE name = ?",
                (_LEASE,),
            )
            interval = f"{float(ttl)} seconds"
            if row is None:
                self._run(
                    "INSERT INTO lease VALUES (?, ?, 1, clock_timestamp() + ?::interval)",
                    (_LEASE, holder, interval),
                )
                return Fence(holder, 1)
            current, epoch, live = str(row[0]), int(row[1]), bool(row[2])
            if live and current != holder:
                return None
            if not live:
                epoch += 1
            self._run(
                "UPDATE lease SET holder = ?, epoch = ?, expires = clock_timestamp() + ?::interval"
                " WHERE name = ?",
                (holder, epoch, interval, _LEASE),
            )
            return Fence(holder, epoch)

    def release_lease(self, fence: Fence) -> None:
        """End ``fence``'s lease now, if it is still the current one, so another core can take
        over without waiting for it to run out."""
        with self._transaction("releasing the publisher lease"):
            self._run(
                "UPDATE lease SET expires = clock_timestamp() "
                "WHERE name = ? AND holder = ? AND epoch = ?",
                (_LEASE, fence.holder, fence.epoch),
            )

    def lease_holder(self) -> tuple[str, int, bool] | None:
        """(holder, epoch, still running) of the publisher lease, if any was ever granted."""
        with self._guard("reading the publisher lease"):
            row = self._one(
                "SELECT holder, epoch, expires > clock_timestamp() FROM lease WHERE name = ?",
                (_LEASE,),
            )
        return None if row is None else (str(row[0]), int(row[1]), bool(row[2]))

    def _check_fence(self, fence: Fence) -> None:
        row = self._one(
            "SELECT holder, epoch, expires > clock_timestamp() FROM lease WHERE name = ?",
            (_LEASE,),
        )
        if row is None or (str(row[0]), int(row[1])) != (fence.holder, fence.epoch):
            held = "nobody" if row is None else f"{row[0]} in epoch {row[1]}"
            raise FencedError(
                f"transparency log: {fence.holder} (epoch {fence.epoch}) may not publish: the "
                f"publisher lease is held by {held}"
            )
        if not row[2]:
            raise FencedError(
                f"transparency log: the publisher lease of {fence.holder} (epoch {fence.epoch}) "
                "has run out"
            )

    def notify(self, event: str) -> None:
        """Tell every core listening on this log that ``event`` happened (after commit)."""
        with self._guard(f"notifying {event}"), self._db.transaction():
            # A notification is a transaction with a commit record of its own; it is a hint,
            # not data, so it need not wait for a flush of the write-ahead log.
            self._run(
                "SELECT set_config('synchronous_commit', 'off', true), pg_notify(?, ?)",
                (NOTIFY_CHANNEL, f"{self._schema} {event}"),
            )
