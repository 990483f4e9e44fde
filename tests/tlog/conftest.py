"""Log stores for the tlog tests: SQLite in a temporary file, or a real PostgreSQL server.

The ``log_db`` fixture runs each test that takes it once per backend. The PostgreSQL server is
started once per session from the Debian ``postgresql`` package's binaries
(``/usr/lib/postgresql/<version>/bin``, or ``initdb`` on ``PATH``), in a temporary directory,
listening only on a Unix socket there, with trust authentication; each test gets a fresh schema.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system user
(which the Debian package creates) through ``runuser``. Without the binaries, that user or psycopg,
the PostgreSQL cases are skipped and say why, or fail where ``QWARD_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qward.tlog.backend import LogBackend
from qward.tlog.store import SQLiteLogStore

BACKENDS = ("sqlite", "postgres")
_SERVER_USER = "postgres"
_schemas = itertools.count()


def _server_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory."""

    def version(path: Path) -> int:
        found = re.search(r"/(\d+)/bin$", str(path))
        return int(found.group(1)) if found else 0

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server: its bin directory, data directory and socket directory."""

    bindir: Path
    base: Path
    as_user: tuple[str, ...]

    def dsn(self, schema: str | None = None) -> str:
        options = f" options='-c search_path={schema}'" if schema else ""
        return f"host={self.base} port=5432 user={_SERVER_USER} dbname=postgres{options}"

    def pg_ctl(self, *args: str) -> None:
        command = [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.base / "data")]
        subprocess.run([*command, *args], check=True, capture_output=True, timeout=120)


def _unavailable(reason: str) -> None:
    """Skip the PostgreSQL cases, or fail them where CI requires PostgreSQL to be tested."""
    if os.environ.get("QWARD_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"QWARD_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    bindir = _server_binaries()
    if bindir is None:
        _unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
            "or on PATH; install them with: apt-get install -y postgresql"
        )
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(_SERVER_USER)
        except KeyError:
            _unavailable("PostgreSQL refuses to run as root and there is no 'postgres' user")
        if shutil.which("runuser") is None:
            _unavailable("running PostgreSQL as the 'postgres' user needs runuser (util-linux)")
        as_user = ("runuser", "-u", _SERVER_USER, "--")
    # Not under pytest's temporary directory: that is private to root, and the server user must
    # reach its data directory and socket.
    base = Path(tempfile.mkdtemp(prefix="qward-pg-"))
    if as_user:
        os.chown(base, account.pw_uid, account.pw_gid)
    server = PostgresServer(bindir=bindir, base=base, as_user=as_user)
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "initdb"),
                "-D",
                str(base / "data"),
                "-U",
                _SERVER_USER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        # Only the socket in ``base``; no TCP. fsync stays on: the store refuses a server without.
        options = f"-c listen_addresses='' -c unix_socket_directories='{base}' -c port=5432"
        server.pg_ctl("-l", str(base / "server.log"), "-w", "-t", "60", "-o", options, "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"starting PostgreSQL failed: {exc.stderr.decode(errors='replace')}")
    try:
        yield server
    finally:
        server.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


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
