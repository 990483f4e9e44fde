"""Issue 10.4: `qward log verify` catches a rewritten log, a rolled-back log and bad column types.

The attacker here can write the log database: they rewrite an entry, recompute its leaf hash and
every node (by re-integrating from scratch) and delete the checkpoints they cannot re-sign; or they
put back an older copy of the whole database.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qward.tlog import merkle
from qward.tlog.store import SQLiteLogStore

from conftest import example_bytes


def qward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def _one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and done.returncode == code, done.stderr
    return lines[0]


def _run_once(state: Path, tmp: Path, name: str) -> None:
    model, request = tmp / "m.onnx", tmp / "r.json"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    request.write_bytes(example_bytes("iris-request.json"))
    done = qward("run", "--model", str(model), "--input", str(request),
                 "--receipt", str(tmp / f"{name}.json"), "--state-dir", str(state))  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    _run_once(state, tmp_path, "first")
    return state


def _verify(state: Path, seen: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return qward("log", "verify", "--state-dir", str(state), "--seen-file", str(seen), *extra)


def test_an_honest_log_verifies_and_is_remembered(state: Path, tmp_path: Path) -> None:
    seen = tmp_path / "seen.checkpoint"
    done = _verify(state, seen)
    assert done.returncode == 0, done.stderr
    assert seen.read_bytes().startswith(b"qward.local/log/")
    again = _verify(state, seen)
    assert again.returncode == 0 and "consistent with 1 checkpoints trusted before" in again.stdout


def test_a_rewritten_log_without_checkpoints_fails(state: Path, tmp_path: Path) -> None:
    db = state / "log.sqlite"
    with sqlite3.connect(db) as conn:
        (data,) = conn.execute("SELECT data FROM entries WHERE idx = 1").fetchone()
        forged = bytes(data) + b" "
        conn.execute(
            "UPDATE entries SET data = ?, leaf_hash = ? WHERE idx = 1",
            (forged, merkle.leaf_hash(forged)),
        )
        conn.execute("DELETE FROM nodes")
        conn.execute("DELETE FROM checkpoints")
        conn.execute("UPDATE meta SET value = 0 WHERE key = 'integrated_size'")
    store = SQLiteLogStore.open(db)
    store.integrate()  # every node recomputed from the forged leaves
    store.close()
    line = _one_line(_verify(state, tmp_path / "fresh-verifier"), 1)
    assert "no signed checkpoint" in line


def test_a_rolled_back_log_fails_for_a_verifier_that_saw_it_newer(
    state: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen.checkpoint"
    old = tmp_path / "old.sqlite"
    shutil.copy(state / "log.sqlite", old)
    _run_once(state, tmp_path, "second")
    assert _verify(state, seen).returncode == 0
    newest = tmp_path / "newest.checkpoint"
    shutil.copy(seen, newest)
    shutil.copy(old, state / "log.sqlite")
    for suffix in ("-wal", "-shm"):
        (state / f"log.sqlite{suffix}").unlink(missing_ok=True)
    assert "rolled back" in _one_line(_verify(state, seen), 1)
    # A verifier with no memory of its own catches it from a checkpoint it is given.
    given = _verify(state, tmp_path / "other-verifier", "--trusted", str(newest))
    assert "rolled back" in _one_line(given, 1)
    # The old copy on its own is internally consistent: only the trusted checkpoint exposes it.
    assert _verify(state, tmp_path / "third-verifier").returncode == 0


def test_text_where_bytes_belong_is_one_line_naming_the_row(state: Path, tmp_path: Path) -> None:
    with sqlite3.connect(state / "log.sqlite") as conn:
        conn.execute("UPDATE entries SET data = 'text' WHERE idx = 2")
    line = _one_line(_verify(state, tmp_path / "seen"), 1)
    assert "log entry 2" in line and "str" in line
