"""``qward keys`` end to end through a real core process: the CLI holds no key material, the core
does the work and logs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from qward.crypto.envelope import parse_sealed
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes, iris_inputs


def qward(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "250"},  # wide enough that tables do not wrap key ids
    )


def test_keys_cli_rotate_report_rewrap_retire(tmp_path: Path) -> None:
    state, repo = tmp_path / "state", tmp_path / "repository"
    listed = qward("keys", "list", state=state)
    assert listed.returncode == 0, listed.stderr
    assert "verified" in listed.stdout and listed.stdout.count("primary") == 3
    model = tmp_path / "iris.onnx"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    (repo / "iris").mkdir(parents=True)
    sealed = repo / "iris" / "model.sealed"
    assert qward("seal", str(model), "-o", str(sealed), state=state).returncode == 0
    before = sealed.read_bytes()
    old_id = parse_sealed(before).key_id

    rotated = qward("keys", "rotate", "hpke-unwrap", state=state)
    assert rotated.returncode == 0, rotated.stderr
    assert f"{old_id} is enabled" in rotated.stdout
    report = qward("keys", "report", str(repo), state=state)
    assert report.returncode == 0, report.stderr
    assert "1 artifacts need migration" in report.stdout and old_id in report.stdout

    rewrapped = qward("keys", "rewrap", str(repo), state=state)
    assert rewrapped.returncode == 0, rewrapped.stderr
    assert "rewrapped 1 of 1" in rewrapped.stdout
    after = sealed.read_bytes()
    assert parse_sealed(after).ciphertext == parse_sealed(before).ciphertext
    assert parse_sealed(after).key_id != old_id
    assert "0 artifacts need migration" in qward("keys", "report", str(repo), state=state).stdout

    retired = qward("keys", "retire", old_id, state=state)
    assert retired.returncode == 0, retired.stderr
    listed = qward("keys", "list", state=state)
    assert re.search(rf"retired.*{old_id}", listed.stdout, re.S), listed.stdout

    # Checkpoint keys roll over too; the whole log still audits against the new trust bundle.
    rolled = qward("keys", "rotate", "checkpoint-signing", state=state)
    assert rolled.returncode == 0, rolled.stderr
    assert "checkpoint-signing: v2" in rolled.stdout and "enabled" in rolled.stdout
    log = qward("log", "verify", state=state)
    assert log.returncode == 0, log.stderr
    bogus = qward("keys", "rotate", "no-such-purpose", state=state)
    assert bogus.returncode == 2 and "Traceback" not in bogus.stderr


def test_keys_rewrap_of_the_core_model_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            sdk = Client(connection, trust=connection.trust())
            info = sdk.register(example_bytes("iris-mlp.onnx"), name="iris")
            old_id = connection.trust().hpke_recipient.key_id
            assert qward("keys", "rotate", "hpke-unwrap", state=state).returncode == 0
            rewrapped = qward("keys", "rewrap", state=state)
            assert rewrapped.returncode == 0, rewrapped.stderr
            assert "rewrapped 1 of 1" in rewrapped.stdout
            assert qward("keys", "retire", old_id, state=state).returncode == 0
    finally:
        core.stop()
    stored = state / "models" / f"{info.model_sha256}.sealed"
    assert parse_sealed(stored.read_bytes()).key_id != old_id
    # A restarted core opens the rewrapped model with the new key; the old one is retired.
    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            sdk = Client(connection, trust=connection.trust())
            inputs, seed = iris_inputs()
            run = sdk.run(info.model_sha256, inputs, seed=seed)
            assert run.verified.body["model"]["sealed_sha256"] != ""
    finally:
        core.stop()
