"""The core gets every checkpoint cosigned by its witnesses; receipts need the pinned quorum."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_witness_service import witnessed_core_state

from qward.errors import VerificationError
from qward.receipts.trust import TrustBundle
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tlog.witness_policy import Quorum

from conftest import example_bytes, iris_inputs


def test_receipts_carry_a_witness_quorum_and_fail_without_it(tmp_path: Path) -> None:
    state, witnesses = witnessed_core_state(tmp_path, 2, quorum=2)
    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            pinned = connection.trust()
            assert isinstance(pinned.witness_policy, Quorum)
            assert pinned.witness_policy.threshold == 2
            # The pinned bundle round-trips with its witnesses.
            assert TrustBundle.from_bytes(pinned.to_bytes()) == pinned
            sdk = Client(connection, trust=pinned)
            model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp")
            inputs, seed = iris_inputs()
            run = sdk.run(model.model_sha256, inputs, seed=seed)
            assert run.verified.checkpoint.size > run.verified.bundle.index
            assert pinned.witness_policy.check(run.verified.bundle.checkpoint) == tuple(
                sorted(w.keys[0].name for w in witnesses)
            )
            # One witness down: the next checkpoint has one cosignature, and the SDK refuses it.
            witnesses[1].stop()
            with pytest.raises(VerificationError, match="requires 2"):
                sdk.run(model.model_sha256, inputs, seed=seed + 1)
    finally:
        core.stop()
        for w in witnesses:
            w.stop()
    assert "did not cosign" in (state / "core.log").read_text()


def test_a_receipt_from_before_the_witnesses_verifies_with_refresh(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from test_witness_service import init_witnesses

    state = tmp_path / "core"
    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            sdk = Client(connection, trust=connection.trust())
            model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp")
            inputs, seed = iris_inputs()
            receipt = tmp_path / "before.json"
            receipt.write_bytes(sdk.run(model.model_sha256, inputs, seed=seed).receipt)
    finally:
        core.stop()
    trust = TrustBundle.from_bytes((state / "trust.json").read_bytes())
    witnesses = init_witnesses(tmp_path, 2, tuple(v.to_vkey() for v in trust.log_verifiers))
    config = {
        "quorum": 2,
        "witnesses": [{"url": w.url, "keys": [k.to_vkey() for k in w.keys]} for w in witnesses],
    }
    (state / "witnesses.json").write_text(json.dumps(config))
    for w in witnesses:
        w.start()
    try:
        # The core's start and stop publish checkpoints, which both witnesses cosign.
        CoreProcess.start(state).stop()
    finally:
        for w in witnesses:
            w.stop()

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qward", "verify", str(receipt), "--state-dir", str(state),
             *extra],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    plain = verify()
    assert plain.returncode == 1 and "--refresh" in plain.stderr
    refreshed = verify("--refresh")
    assert refreshed.returncode == 0, refreshed.stderr
