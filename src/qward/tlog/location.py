"""Where a transparency log lives: an SQLite file (the embedded default) or a PostgreSQL URL."""

from __future__ import annotations

import os
from pathlib import Path

from qward.tlog.backend import LogBackend

__all__ = ["LOG_DATABASE_ENV", "is_postgres", "log_location", "open_log_store"]

#: Set to a ``postgresql://`` URL to keep the log in PostgreSQL instead of ``log.sqlite``.
LOG_DATABASE_ENV = "QWARD_LOG_DATABASE"

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def log_location(state_dir: Path, override: str | None = None) -> str:
    """The log of ``state_dir``: ``override``, else ``$QWARD_LOG_DATABASE``, else log.sqlite."""
    return override or os.environ.get(LOG_DATABASE_ENV) or str(state_dir / "log.sqlite")


def is_postgres(location: str) -> bool:
    """Whether ``location`` is a PostgreSQL URL (else it is an SQLite file's path)."""
    return location.startswith(_POSTGRES_SCHEMES)


def open_log_store(location: str) -> LogBackend:
    """Open the log at ``location``: a PostgreSQL URL, or the path of an SQLite file."""
    if is_postgres(location):
        # Imported here so that psycopg is needed only by deployments that use PostgreSQL.
        from qward.tlog.pg_store import PostgresLogStore

        return PostgresLogStore.open(location)
    from qward.tlog.store import SQLiteLogStore

    return SQLiteLogStore.open(location)
