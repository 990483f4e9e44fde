"""Log stores for the tlog tests: SQLite in a temporary file, or a real PostgreSQL server.

The ``log_db`` fixture runs each test that takes it once per backend; on PostgreSQL each test
gets a fresh schema on the session's server (``postgres_server``, see tests/postgres_server.py).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qward.tlog.backend import LogBackend
from qward.tlog.store import SQLiteLogStore

from postgres_server import PostgresServer

BACKENDS = ("sqlite", "postgres")
_schemas = itertools.count()


@dataclass(frozen=True)
class LogDatabase:
    """One empty log database, and raw access to it as someone with write access to the disk."""

    kind: str
    target: str

    def open(self) -> LogBackend:
        if self.kind == "sqlite":
            return SQLiteLogStore.open(self.target)
        from qward.tlog.pg_store import PostgresLogStore

        return PostgresLogStore.open(self.target)

    @contextmanager
    def raw(self) -> Iterator[Callable[..., Any]]:
        """``run(sql, *params)`` on a connection of its own, each statement committed at once.

        ``sql`` uses ``?`` placeholders; ``run`` returns the driver's cursor.
        """
        if self.kind == "sqlite":
            lite = sqlite3.connect(self.target, isolation_level=None)
            try:
                yield lambda sql, *params: lite.execute(sql, params)
            finally:
                lite.close()
            return
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as pg:
            yield lambda sql, *params: pg.execute(sql.replace("?", "%s"), params)

    def execute(self, sql: str, *params: object) -> int:
        """Run one statement outside the store; returns how many rows it changed."""
        with self.raw() as run:
            return int(run(sql, *params).rowcount)

    def fetchone(self, sql: str, *params: object) -> Any:
        with self.raw() as run:
            return run(sql, *params).fetchone()

    def fail_inserts(self, table: str, message: str) -> None:
        """Make every later insert into ``table`` fail with ``message``, as a full disk would."""
        if self.kind == "sqlite":
            self.execute(
                f"CREATE TRIGGER fail BEFORE INSERT ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
            return
        self.execute(
            "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        self.execute(
            f"CREATE TRIGGER fail BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION fail()"
        )


def make_log_db(kind: str, request: pytest.FixtureRequest, directory: Path) -> LogDatabase:
    """A fresh, empty log database of ``kind``."""
    if kind == "sqlite":
        return LogDatabase(kind=kind, target=str(directory / "log.sqlite"))
    server: PostgresServer = request.getfixturevalue("postgres_server")
    schema = f"log_{os.getpid()}_{next(_schemas)}"
    admin = LogDatabase(kind=kind, target=server.dsn())
    admin.execute(f"CREATE SCHEMA {schema}")
    return LogDatabase(kind=kind, target=server.dsn(schema))


@pytest.fixture(params=BACKENDS)
def log_db(request: pytest.FixtureRequest, tmp_path: Path) -> LogDatabase:
    """An empty log database, once on SQLite and once on PostgreSQL."""
    return make_log_db(request.param, request, tmp_path)
