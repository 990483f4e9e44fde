"""The qward command as a user runs it: exit codes, one-line errors, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def qward(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("cli") / "state"
    result = qward("demo", state=state)
    assert result.returncode == 0, result.stderr
    assert "bitwise-identical" in result.stdout
    # Its stdout is a pipe here: the table keeps its natural width, no cell cut with an ellipsis.
    assert "…" not in result.stdout, result.stdout
    yield state


def _receipt(state: Path) -> Path:
    (path,) = (state / "receipts").glob("*.json")
    return path


def test_demo_writes_a_receipt_that_verifies(demo_state: Path) -> None:
    result = qward("verify", str(_receipt(demo_state)), state=demo_state)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "signed by its checkpoint" in result.stdout


def test_tampered_receipt_fails_with_exit_1(demo_state: Path, tmp_path: Path) -> None:
    data = bytearray(_receipt(demo_state).read_bytes())
    data[data.index(b'"seed":') + 7] ^= 0x01
    bad = tmp_path / "bad.json"
    bad.write_bytes(bytes(data))
    result = qward("verify", str(bad), state=demo_state)
    assert result.returncode == 1
    assert "error" in result.stderr and "Traceback" not in result.stderr


def test_verify_checks_the_model_file(demo_state: Path, tmp_path: Path) -> None:
    from conftest import example_bytes

    model = bytearray(example_bytes("iris-mlp.onnx"))
    model[100] ^= 0xFF
    altered = tmp_path / "altered.onnx"
    altered.write_bytes(bytes(model))
    result = qward("verify", str(_receipt(demo_state)), "--model", str(altered), state=demo_state)
    assert result.returncode == 1
    assert "model digest" in result.stderr


def test_missing_file_is_exit_2(demo_state: Path) -> None:
    result = qward("verify", "/nonexistent/receipt.json", state=demo_state)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_run_then_replay_from_the_cli(demo_state: Path, tmp_path: Path, request_file: Path) -> None:
    from conftest import example_bytes

    model = tmp_path / "iris.onnx"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    receipt = tmp_path / "r.json"
    ran = qward(
        "run",
        "--model",
        str(model),
        "--input",
        str(request_file),
        "--receipt",
        str(receipt),
        state=demo_state,
    )
    assert ran.returncode == 0, ran.stderr
    assert '"label"' in ran.stdout
    replayed = qward("replay", str(receipt), "--input", str(request_file), state=demo_state)
    assert replayed.returncode == 0, replayed.stderr
    assert "bitwise-identical" in replayed.stdout
    outputs = tmp_path / "outputs.json"
    outputs.write_text(ran.stdout)
    with_original = qward(
        "replay",
        str(receipt),
        "--input",
        str(request_file),
        "--original-output",
        str(outputs),
        state=demo_state,
    )
    assert with_original.returncode == 0, with_original.stderr
    assert "bitwise-identical" in with_original.stdout
    outputs.write_text("{not json")
    bad = qward(
        "replay",
        str(receipt),
        "--input",
        str(request_file),
        "--original-output",
        str(outputs),
        state=demo_state,
    )
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_bad_request_file_is_named(demo_state: Path, tmp_path: Path) -> None:
    request = tmp_path / "bad.json"
    request.write_text(
        '{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}'
    )
    result = qward("verify", str(_receipt(demo_state)), "--input", str(request), state=demo_state)
    assert result.returncode == 2
    assert "do not fill shape" in result.stderr


def test_log_verify_passes_then_catches_tampering(demo_state: Path) -> None:
    import sqlite3

    ok = qward("log", "verify", state=demo_state)
    assert ok.returncode == 0, ok.stderr
    assert "entries" in ok.stdout
    with sqlite3.connect(demo_state / "log.sqlite") as db:
        rows = db.execute("SELECT idx, data FROM entries ORDER BY idx").fetchall()
        idx, data = next((i, bytes(d)) for i, d in rows if b"core-start" in bytes(d))
        db.execute(
            "UPDATE entries SET data = ? WHERE idx = ?",
            (data.replace(b"core-start", b"core-stArt"), idx),
        )
    bad = qward("log", "verify", state=demo_state)
    assert bad.returncode == 1
    assert f"{idx}" in bad.stderr and "Traceback" not in bad.stderr


def test_a_table_printed_into_a_pipe_is_never_cut(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.table import Table

    from qward.cli._app import console, print_table

    width = console.width
    digest = "ab" * 32
    table = Table(show_header=False)
    table.add_row("digests", f"{digest} {digest} {digest}")
    print_table(table)
    out = capsys.readouterr().out
    assert f"{digest} {digest} {digest}" in out and "…" not in out
    assert console.width == width  # the console is back at the width it had
