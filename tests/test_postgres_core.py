"""The protected core with its transparency log in PostgreSQL instead of the SQLite default."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes, iris_inputs
from postgres_server import PostgresServer


@pytest.fixture()
def pg_core(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[CoreProcess, str]]:
    url = postgres_server.url("core_log")
    monkeypatch.setenv("QWARD_LOG_DATABASE", url)
    process = CoreProcess.start(tmp_path / "state")
    yield process, url
    process.stop()


def test_runs_are_logged_in_postgres_and_verify(
    pg_core: tuple[CoreProcess, str], postgres_server: PostgresServer
) -> None:
    core, url = pg_core
    with core.client() as connection:
        sdk = Client(connection, trust=connection.trust())
        model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp")
        inputs, seed = iris_inputs()
        run = sdk.run(model.model_sha256, inputs, seed=seed)
    # The receipt's log index is a row of the PostgreSQL log, and no SQLite log was made.
    assert not (core.state_dir / "log.sqlite").exists()
    with psycopg.connect(postgres_server.dsn("core_log")) as db:
        row = db.execute(
            "SELECT data FROM entries WHERE idx = %s", (run.verified.bundle.index,)
        ).fetchone()
    assert row is not None and b"qward/receipt" in bytes(row[0])
    audit = subprocess.run(
        [sys.executable, "-m", "qward", "log", "verify", "--state-dir", str(core.state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stderr
    assert "entries" in audit.stdout
    # Tampering with a row in PostgreSQL is caught the same way as in SQLite.
    with psycopg.connect(postgres_server.dsn("core_log"), autocommit=True) as db:
        db.execute("UPDATE entries SET data = data || 'x'::bytea WHERE idx = 0")
    tampered = subprocess.run(
        [
            sys.executable,
            "-m",
            "qward",
            "log",
            "verify",
            "--log-database",
            url,
            "--state-dir",
            str(core.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tampered.returncode == 1
    assert "entry 0" in tampered.stderr and "Traceback" not in tampered.stderr
