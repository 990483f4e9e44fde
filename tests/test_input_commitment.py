"""Salted input commitments: the log cannot confirm a guessed input; the salt holder can."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.core_api import ModelInfo
from qward.errors import FormatError, VerificationError
from qward.receipts.commitment import SALT_BYTES, check_input, input_commitment
from qward.receipts.receipt import check_body
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tensors import Tensor, encode_tensors, tensors_digest

from conftest import iris_inputs


def _fresh_inputs() -> tuple[tuple[Tensor, ...], int]:
    """Iris inputs no other test sends: the session's shared log must not already hold them."""
    inputs, seed = iris_inputs()
    jitter = np.random.default_rng().uniform(0.0, 0.01, size=inputs[0].to_numpy().shape)
    shifted = (inputs[0].to_numpy() + jitter).astype(inputs[0].to_numpy().dtype)
    return (Tensor.from_numpy(inputs[0].name, shifted), *inputs[1:]), seed


def test_a_committed_run_logs_no_plain_input_digest(
    sdk: Client, iris: ModelInfo, core: CoreProcess
) -> None:
    inputs, seed = _fresh_inputs()
    run = sdk.run(iris.model_sha256, inputs, seed=seed, commit_input=True)
    salt = run.input_salt
    assert salt is not None and len(salt) == SALT_BYTES
    section = run.verified.body["input"]
    assert set(section) == {"hmac_sha256"}
    assert section["hmac_sha256"] == input_commitment(salt, inputs)
    # Someone holding the whole log who guesses the input exactly still cannot confirm it: the
    # plain digest is nowhere in the log, and neither is the salt.
    log = (core.state_dir / "log.sqlite").read_bytes()
    wal = core.state_dir / "log.sqlite-wal"
    stored = log + (wal.read_bytes() if wal.exists() else b"")
    assert tensors_digest(inputs).encode() not in stored
    assert salt not in stored and salt.hex().encode() not in stored
    # The salt holder can check the input; without it, or with another input, it fails.
    check_input(section, inputs, salt)
    with pytest.raises(VerificationError, match="salt is needed"):
        check_input(section, inputs, None)
    other = (Tensor.from_numpy(inputs[0].name, inputs[0].to_numpy() + 1),)
    with pytest.raises(VerificationError, match="not the inputs"):
        check_input(section, other, salt)
    with pytest.raises(VerificationError, match="not the inputs"):
        check_input(section, inputs, bytes(SALT_BYTES))


def test_a_committed_run_replays_only_with_its_salt(sdk: Client, iris: ModelInfo) -> None:
    inputs, seed = iris_inputs()
    run = sdk.run(iris.model_sha256, inputs, seed=seed, commit_input=True)
    replayed = sdk.replay(run.receipt, inputs, input_salt=run.input_salt)
    assert replayed.verdict == "bitwise-identical"
    with pytest.raises(VerificationError, match="salt is needed"):
        sdk.replay(run.receipt, inputs)
    with pytest.raises(VerificationError):
        sdk.replay(run.receipt, inputs, input_salt=bytes(SALT_BYTES))


def test_plain_runs_keep_the_digest(sdk: Client, iris: ModelInfo) -> None:
    inputs, seed = iris_inputs()
    run = sdk.run(iris.model_sha256, inputs, seed=seed)
    assert run.input_salt is None
    assert run.verified.body["input"] == {"sha256": tensors_digest(inputs)}


@settings(max_examples=30, deadline=None)
@given(
    st.binary(min_size=SALT_BYTES, max_size=SALT_BYTES),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8),
)
def test_the_commitment_is_the_specified_hmac(salt: bytes, values: list[float]) -> None:
    inputs = (Tensor.from_numpy("x", np.asarray([values], dtype=np.float32)),)
    expected = hmac.new(
        salt, b"qward/input-commitment/v1\x00" + encode_tensors(inputs), hashlib.sha256
    ).hexdigest()
    assert input_commitment(salt, inputs) == expected
    assert input_commitment(bytes(a ^ 1 for a in salt), inputs) != expected


def test_a_receipt_input_must_be_exactly_one_kind() -> None:
    from qward.receipts.receipt import RECEIPT_FORMAT

    digest = "a" * 64
    body = {
        "format": RECEIPT_FORMAT,
        "model": {"sha256": digest},
        "input": {"sha256": digest, "hmac_sha256": digest},
        "output": {"sha256": digest},
    }
    with pytest.raises(FormatError):
        check_body({**body})


def test_the_cli_keeps_the_salt_beside_the_receipt(tmp_path: Path, request_file: Path) -> None:
    state, receipt = tmp_path / "state", tmp_path / "r.json"
    model = Path(__file__).parents[1] / "src" / "qward" / "examples" / "iris-mlp.onnx"

    def qward(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qward", *args, "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=180,
        )

    run = qward(
        "run",
        "--model",
        str(model),
        "--input",
        str(request_file),
        "--receipt",
        str(receipt),
        "--commit-input",
    )
    assert run.returncode == 0, run.stderr
    salt_file = tmp_path / "r.json.salt"
    assert salt_file.stat().st_mode & 0o777 == 0o600
    assert "hmac_sha256" in json.loads(receipt.read_text())["body"]["input"]
    ok = qward("verify", str(receipt), "--input", str(request_file))
    assert ok.returncode == 0, ok.stderr
    salt_file.rename(tmp_path / "kept.salt")
    missing = qward("verify", str(receipt), "--input", str(request_file))
    assert missing.returncode == 1 and "salt is needed" in missing.stderr
    explicit = qward(
        "verify",
        str(receipt),
        "--input",
        str(request_file),
        "--input-salt",
        str(tmp_path / "kept.salt"),
    )
    assert explicit.returncode == 0, explicit.stderr
