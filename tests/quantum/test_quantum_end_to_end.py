"""A sealed circuit through the real core and sandboxed worker: the receipt verifies and binds the
compiled circuit, shots and seed; replay is bitwise; an altered circuit is caught."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pennylane")

from qward.core_api import ModelInfo
from qward.encoding import canonical_json
from qward.errors import ProofError, VerificationError
from qward.receipts.receipt import ReceiptBundle
from qward.receipts.replay_verdict import MISMATCH, judge
from qward.receipts.verify import Verifier
from qward.runtime.circuit_spec import parse_circuit_spec
from qward.runtime.circuits import CircuitModel
from qward.sdk.client import Client, VerifiedRun
from qward.tensors import Tensor, tensors_from_json

from conftest import example_bytes

EXAMPLE = example_bytes("iris-vqc.circuit.json")


def _request() -> tuple[tuple[Tensor, ...], int]:
    inputs, params = tensors_from_json(example_bytes("iris-vqc-request.json"))
    return inputs, int(params["seed"])


@pytest.fixture(scope="module")
def vqc(sdk: Client) -> ModelInfo:
    return sdk.register(EXAMPLE, name="iris-vqc")


@pytest.fixture(scope="module")
def run(sdk: Client, vqc: ModelInfo) -> VerifiedRun:
    inputs, seed = _request()
    return sdk.run(vqc.model_sha256, inputs, seed=seed)


def test_receipt_binds_the_compiled_circuit_shots_and_seed(
    vqc: ModelInfo, run: VerifiedRun
) -> None:
    assert vqc.inputs == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    inputs, seed = _request()
    _, expected = CircuitModel(parse_circuit_spec(EXAMPLE)).run(inputs, seed)
    body = run.verified.body
    circuit = body["runtime"]["circuit"]
    assert circuit == expected
    assert (circuit["shots"], circuit["seed"], body["seed"]) == (1000, seed, seed)
    assert circuit["device"] == "default.qubit" and circuit["executions"] == 3
    assert body["runtime"]["engine"] == "pennylane"
    assert body["runtime"]["libraries"]["pennylane"]
    assert body["runtime"]["session_options"]["fresh_device_per_request"] is True
    labels = {t.name: t.to_numpy() for t in run.outputs}["label"]
    assert labels.tolist() == [0, 1, 2]


def test_replay_is_bitwise(sdk: Client, run: VerifiedRun) -> None:
    inputs, _ = _request()
    result = sdk.replay(run.receipt, inputs)
    assert result.verdict == "bitwise-identical"
    assert result.outputs == run.outputs


def test_a_different_seed_gives_a_different_receipt(
    sdk: Client, vqc: ModelInfo, run: VerifiedRun
) -> None:
    inputs, seed = _request()
    other = sdk.run(vqc.model_sha256, inputs, seed=seed + 1)
    assert other.verified.body["runtime"]["circuit"]["seed"] == seed + 1
    assert other.verified.body["output"]["sha256"] != run.verified.body["output"]["sha256"]
    assert other.receipt != run.receipt


def test_an_altered_circuit_is_rejected(sdk: Client, run: VerifiedRun) -> None:
    doc = json.loads(EXAMPLE)
    doc["weights"]["layers"][0][0][0] = (0.125).hex()
    altered = canonical_json(doc)
    # 1. The altered spec is not the model the receipt names.
    with pytest.raises(VerificationError, match="differs from the receipt"):
        Verifier.check_model(run.verified, altered)
    # 2. A receipt edited to claim another compiled circuit no longer verifies: its entry
    #    no longer leads to the signed checkpoint (a v2 receipt, the default, has no signature).
    bundle = ReceiptBundle.from_bytes(run.receipt)
    forged = dict(bundle.body)
    forged["runtime"] = {**forged["runtime"], "circuit": {**forged["runtime"]["circuit"]}}
    forged["runtime"]["circuit"]["sha256"] = "0" * 64
    tampered = ReceiptBundle(
        body=forged,
        signature=bundle.signature,
        index=bundle.index,
        inclusion_proof=bundle.inclusion_proof,
        checkpoint=bundle.checkpoint,
    )
    with pytest.raises(ProofError):
        sdk.replay(tampered.to_bytes(), _request()[0])
    # 3. Replaying the altered circuit on the same input and seed is judged a mismatch.
    inputs, seed = _request()
    outputs, record = CircuitModel(parse_circuit_spec(altered)).run(inputs, seed)
    verdict = judge(
        body=run.verified.body,
        replay_runtime={**run.verified.body["runtime"], "circuit": record},
        replay_outputs=outputs,
    )
    assert verdict.verdict == MISMATCH and "compiled circuit differs" in verdict.detail


def test_lightning_with_shots_replays_bitwise(sdk: Client) -> None:
    pytest.importorskip("pennylane_lightning")
    doc = json.loads(EXAMPLE)
    doc["device"] = "lightning.qubit"
    doc["measurements"].append({"name": "bits", "type": "sample", "wires": [1, 2]})
    info = sdk.register(canonical_json(doc), name="iris-vqc-lightning")
    inputs, seed = _request()
    first = sdk.run(info.model_sha256, inputs, seed=seed)
    assert first.verified.body["runtime"]["circuit"]["device"] == "lightning.qubit"
    assert sdk.replay(first.receipt, inputs).verdict == "bitwise-identical"
    assert sdk.run(info.model_sha256, inputs, seed=seed).outputs == first.outputs


def test_qward_run_accepts_a_circuit_like_an_onnx_model(tmp_path: Path) -> None:
    spec, request = tmp_path / "iris-vqc.circuit.json", tmp_path / "request.json"
    spec.write_bytes(EXAMPLE)
    request.write_bytes(example_bytes("iris-vqc-request.json"))
    receipt, state = tmp_path / "receipt.json", tmp_path / "state"

    def qward(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qward", *args, "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=180,
        )

    ran = qward("run", "--model", str(spec), "--input", str(request), "--receipt", str(receipt))
    assert ran.returncode == 0, ran.stderr
    assert '"label"' in ran.stdout and '"scores"' in ran.stdout
    replayed = qward("replay", str(receipt), "--input", str(request))
    assert replayed.returncode == 0 and "bitwise-identical" in replayed.stdout
    verified = qward("verify", str(receipt), "--model", str(spec))
    assert verified.returncode == 0, verified.stderr
