"""A throwaway PostgreSQL server for the tests, started once per session.

The server comes from the Debian ``postgresql`` package's binaries (``/usr/lib/postgresql/<version>/
bin``, or ``initdb`` on ``PATH``), runs in a temporary directory, listens only on a Unix socket
there, with trust authentication. PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` system user (which the Debian package creates) through ``runuser``. Without the
binaries, that user or psycopg, the PostgreSQL cases are skipped and say why, or fail where
``QWARD_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest

__all__ = ["PostgresServer", "ServerUnavailableError", "launch", "postgres_server", "shut_down"]

_SERVER_USER = "postgres"


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

    def url(self, schema: str) -> str:
        """A ``postgresql://`` URL for ``schema`` (created if missing), as qward's settings take."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        options = quote(f"-c search_path={schema}")
        return (
            f"postgresql://{_SERVER_USER}@/postgres?host={quote(str(self.base))}&options={options}"
        )

    def pg_ctl(self, *args: str) -> None:
        command = [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.base / "data")]
        subprocess.run([*command, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        # Only the socket in ``base``; no TCP. fsync stays on: the store refuses a server without.
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.base}' -c port=5432"
        self.pg_ctl("-l", str(self.base / "server.log"), "-w", "-t", "60", "-o", options, "start")

    def stop(self) -> None:
        """Stop the server at once, as a crash would (connections are cut, nothing waits)."""
        self.pg_ctl("-m", "immediate", "-w", "stop")


def _unavailable(reason: str) -> NoReturn:
    """Skip the PostgreSQL cases, or fail them where CI requires PostgreSQL to be tested."""
    if os.environ.get("QWARD_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"QWARD_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


class ServerUnavailableError(Exception):
    """A throwaway server cannot be started here; the message says what is missing."""


def launch() -> PostgresServer:
    """Start a throwaway server (see the module); ``ServerUnavailableError`` says why it cannot."""
    if importlib.util.find_spec("psycopg") is None:
        raise ServerUnavailableError("psycopg is not installed (pip install 'psycopg[binary]')")
    bindir = _server_binaries()
    if bindir is None:
        raise ServerUnavailableError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
            "or on PATH; install them with: apt-get install -y postgresql"
        )
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(_SERVER_USER)
        except KeyError:
            raise ServerUnavailableError(
                "PostgreSQL refuses to run as root and there is no 'postgres' user; install the "
                "server with: apt-get install -y postgresql (it creates that user)"
            ) from None
        if shutil.which("runuser") is None:
            raise ServerUnavailableError(
                "running PostgreSQL as the 'postgres' user needs runuser: apt-get install -y "
                "util-linux"
            )
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
        server.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        why = exc.stderr.decode(errors="replace")
        raise RuntimeError(f"starting PostgreSQL failed: {why}") from None
    return server


def shut_down(server: PostgresServer) -> None:
    """Stop a server from ``launch`` and remove its files."""
    with contextlib.suppress(subprocess.CalledProcessError):
        server.stop()
    shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = launch()
    except ServerUnavailableError as exc:
        _unavailable(str(exc))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        shut_down(server)
