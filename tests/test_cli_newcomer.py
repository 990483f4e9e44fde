"""Issue 11: every CLI command misused as a newcomer would, from a plain (non-terminal) shell.

Each case runs ``qward`` as a subprocess with stdin, stdout and stderr not a terminal and a narrow
COLUMNS, and asserts: exactly one non-empty line on stderr, no "Traceback" anywhere, and the
README's exit code (0 ok, 1 verification failed, 2 bad input or usage, 3 core or runtime failure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import example_bytes

# Long enough that any wrapping at a guessed terminal width would split the error line.
_LONG = "a-rather-long-directory-name-that-would-wrap-at-eighty-columns-" * 2


def qward(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "QWARD_TOKEN"}
    environ.update({"COLUMNS": "40", **env})
    return subprocess.run(
        [sys.executable, "-m", "qward", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        env=environ,
        cwd=cwd,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert the documented failure shape and return the one stderr line."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error ("), lines[0]
    assert done.returncode == code, (done.returncode, done.stderr)
    return lines[0]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("newcomer")
    done = qward("demo", "--state-dir", str(base / "state"))
    assert done.returncode == 0, done.stderr
    yield base / "state"


@pytest.fixture(scope="module")
def receipt(state: Path) -> Path:
    (path,) = (state / "receipts").glob("*.json")
    return path


_USAGE = [
    [],
    ["bogus-command"],
    ["seal", "m.onnx"],
    ["seal", "nosuchfile.onnx"],
    ["verify"],
    ["verify", "x.json", "--bogus-flag"],
    ["serve", "--port", "notanumber"],
    ["keys"],
    ["keys", "rotate", "--policy", "bogus"],
    ["token"],
    ["token", "create", "--role", "superuser"],
    ["audit"],
    ["witness"],
    ["witness", "serve"],
    ["log"],
]


@pytest.mark.parametrize("args", _USAGE, ids=lambda a: " ".join(a) or "(no arguments)")
def test_usage_errors_are_one_line_and_exit_2(args: list[str]) -> None:
    line = one_line_error(qward(*args), 2)
    assert line.startswith("error (usage)")


def test_no_arguments_prints_the_command_list_on_stdout() -> None:
    done = qward()
    assert "Commands:" in done.stdout and "serve" in done.stdout


def test_version() -> None:
    done = qward("--version")
    assert done.returncode == 0 and done.stdout.startswith("qward ")


def test_help_has_no_stray_type_badges_and_every_option_is_described() -> None:
    import typer.main

    from qward.cli import app

    assert "<bool>" not in qward("keys", "rotate", "--help").stdout
    undocumented = []

    def walk(command: object, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for param in getattr(command, "params", []):
            if param.name != "help" and not getattr(param, "help", None):
                undocumented.append(f"{' '.join(path)} {param.name}")

    walk(typer.main.get_command(app), ["qward"])
    assert undocumented == []


def test_policy_lists_its_choices() -> None:
    assert "classical|hybrid|pq-only|cnsa" in qward("keys", "rotate", "--help").stdout


def test_error_lines_do_not_wrap_at_any_width(state: Path, tmp_path: Path) -> None:
    # The regression behind issue 11: a long path split "is not\nvalid JSON" over two lines.
    missing = tmp_path / _LONG / "trust.json"
    line = one_line_error(qward("verify", "x.json", "--trust", str(missing)), 2)
    assert f"{missing}' does not exist" in line


@pytest.mark.parametrize(
    "target",
    ["/nonexistent/dir/x.sealed", "{tmp}"],
    ids=["missing-directory", "a-directory"],
)
def test_seal_output_path_is_checked(state: Path, tmp_path: Path, target: str) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    out = target.format(tmp=tmp_path)
    done = qward("seal", str(model), "-o", out, "--state-dir", str(state))
    assert out in one_line_error(done, 2)


@pytest.mark.parametrize(
    "garbage", [b"\x00\x01garbage" * 100, b"root:x:0:0:root:/root:/bin/bash\n"]
)
def test_seal_refuses_what_is_not_a_model(state: Path, tmp_path: Path, garbage: bytes) -> None:
    model = tmp_path / "not-a-model.onnx"
    model.write_bytes(garbage)
    done = qward("seal", str(model), "-o", str(tmp_path / "x"), "--state-dir", str(state))
    one_line_error(done, 2)
    assert not (tmp_path / "x").exists()


def test_run_checks_the_receipt_path_before_running(state: Path, tmp_path: Path) -> None:
    from qward.tlog.location import log_location, open_log_store

    def log_size() -> int:
        store = open_log_store(log_location(state))
        try:
            return store.size()
        finally:
            store.close()

    before = log_size()
    model, request = tmp_path / "m.onnx", tmp_path / "r.json"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    request.write_bytes(example_bytes("iris-request.json"))
    done = qward(
        "run", "--model", str(model), "--input", str(request),
        "--receipt", "/nonexistent/x.json", "--state-dir", str(state),
    )  # fmt: skip
    assert "/nonexistent/x.json" in one_line_error(done, 2)
    # Nothing ran: the core was never asked, so the log did not grow.
    assert log_size() == before


def test_demo_refuses_an_unusable_state_dir() -> None:
    assert "/proc/foo" in one_line_error(qward("demo", "--state-dir", "/proc/foo"), 2)


def test_audit_export_checks_its_output_path(state: Path) -> None:
    done = qward("audit", "export", "-o", "/nonexistent/e.json", "--state-dir", str(state))
    assert "/nonexistent/e.json" in one_line_error(done, 2)


@pytest.mark.parametrize("since", ["yesterday", "24 hours", "2026-13-45", "-5h"])
def test_audit_query_refuses_unparseable_dates(state: Path, since: str) -> None:
    done = qward("audit", "query", "--since", since, "--state-dir", str(state))
    assert repr(since) in one_line_error(done, 2)


def test_audit_query_takes_relative_and_iso_dates_and_prints_json(state: Path) -> None:
    recent = json.loads(qward("audit", "query", "--since", "24h", "--json", "--state-dir",
                              str(state)).stdout)  # fmt: skip
    future = json.loads(qward("audit", "query", "--since", "2999-01-01", "--json", "--state-dir",
                              str(state)).stdout)  # fmt: skip
    assert len(recent["runs"]) >= 1 and future["runs"] == []
    assert len(recent["runs"][0]["input_sha256"]) == 64  # full digests, never cut


def test_upload_without_a_token_says_so(state: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    done = qward("upload", str(model), "--name", "m", "--state-dir", str(state))
    assert "token" in one_line_error(done, 2)


def test_upload_to_a_server_that_is_not_running_names_it(state: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    done = qward(
        "upload", str(model), "--name", "m", "--url", "http://127.0.0.1:9",
        "--state-dir", str(state), QWARD_TOKEN="qwt_x",
    )  # fmt: skip
    assert "http://127.0.0.1:9" in one_line_error(done, 3)


def test_exit_code_1_for_a_receipt_that_fails_verification(
    state: Path, receipt: Path, tmp_path: Path
) -> None:
    doc = json.loads(receipt.read_bytes())
    doc["body"]["seed"] += 1
    bad = tmp_path / "changed.json"
    bad.write_text(json.dumps(doc))
    one_line_error(qward("verify", str(bad), "--state-dir", str(state)), 1)


def test_exit_code_1_for_a_receipt_signed_by_an_unknown_key(tmp_path: Path) -> None:
    # Only a per-receipt (v1) receipt names a receipt key of its own.
    state = tmp_path / "state"
    done = qward("demo", "--state-dir", str(state), QWARD_RECEIPT_SIGNATURES="per-receipt")
    assert done.returncode == 0, done.stderr
    (receipt,) = (state / "receipts").glob("*.json")
    doc = json.loads(receipt.read_bytes())
    doc["body"]["signer"]["key_id"] = "0" * len(doc["body"]["signer"]["key_id"])
    bad = tmp_path / "foreign.json"
    bad.write_text(json.dumps(doc))
    one_line_error(qward("verify", str(bad), "--state-dir", str(state)), 1)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"[1, 2]", b'{"format": "other"}'])
def test_exit_code_2_for_a_file_that_is_not_a_receipt(
    state: Path, tmp_path: Path, content: bytes
) -> None:
    bad = tmp_path / "not-a-receipt.json"
    bad.write_bytes(content)
    one_line_error(qward("verify", str(bad), "--state-dir", str(state)), 2)


def test_exit_code_2_for_retiring_an_unknown_key(state: Path) -> None:
    done = qward("keys", "retire", "nosuchkey", "--state-dir", str(state))
    assert "nosuchkey" in one_line_error(done, 2)


def test_a_state_dir_too_long_for_a_unix_socket_is_named(tmp_path: Path) -> None:
    state = tmp_path / _LONG / "state"
    assert "too long" in one_line_error(qward("demo", "--state-dir", str(state)), 2)


def test_exit_code_3_when_the_core_cannot_start(tmp_path: Path) -> None:
    broken = tmp_path / "state"
    broken.mkdir()
    (broken / "keystore.json").write_text("{}")
    request = tmp_path / "r.json"
    request.write_bytes(example_bytes("iris-request.json"))
    model = tmp_path / "m.onnx"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    done = qward(
        "run", "--model", str(model), "--input", str(request),
        "--receipt", str(tmp_path / "r.out"), "--state-dir", str(broken),
    )  # fmt: skip
    one_line_error(done, 3)


def test_a_pretty_printed_receipt_verifies(state: Path, receipt: Path, tmp_path: Path) -> None:
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(receipt.read_bytes()), indent=2))
    done = qward("verify", str(pretty), "--state-dir", str(state))
    assert done.returncode == 0, done.stderr


def test_a_receipt_with_a_duplicated_key_is_refused(
    state: Path, receipt: Path, tmp_path: Path
) -> None:
    text = receipt.read_text()
    bad = tmp_path / "dup.json"
    bad.write_text(text.replace('{"body":{', '{"body":{"seed":7,', 1))
    one_line_error(qward("verify", str(bad), "--state-dir", str(state)), 2)


def test_demo_prints_the_verify_command_on_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = qward("demo", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("verify it yourself:")]
    assert len(line) > 80 and line.endswith(f"--state-dir {state}")


def test_witness_init_works_as_the_readme_writes_it(tmp_path: Path) -> None:
    done = qward("witness", "init", "--name", "witness.example/w1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    keys = done.stdout.split()
    assert len(keys) == 2 and all(k.startswith("witness.example/w1+") for k in keys)
    again = qward("witness", "keys", cwd=tmp_path)
    assert again.stdout.split() == keys
    one_line_error(qward("witness", "init", "--name", "witness.example/w1", cwd=tmp_path), 2)
