"""The core emits OpenTelemetry spans for decrypt, run, sign and log append, without secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes, iris_inputs


@pytest.mark.parametrize("signing", ["checkpoint", "per-receipt"])
def test_core_spans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signing: str) -> None:
    trace_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("QWARD_TRACE_FILE", str(trace_file))
    monkeypatch.setenv("QWARD_RECEIPT_SIGNATURES", signing)
    core = CoreProcess.start(tmp_path / "state")
    try:
        with core.client() as connection:
            sdk = Client(connection, trust=connection.trust())
            info = sdk.register(example_bytes("iris-mlp.onnx"), name="iris")
            inputs, seed = iris_inputs()
            sdk.run(info.model_sha256, inputs, seed=seed)
    finally:
        core.stop()
    spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
    names = {s["name"] for s in spans}
    assert {
        "qward.decrypt",
        "qward.run",
        "qward.log.append",
        "qward.log.append_publish",
        "qward.core.run",
    } <= names
    # A receipt's own signature only when each receipt is signed.
    assert ("qward.sign" in names) == (signing == "per-receipt")
    run = next(s for s in spans if s["name"] == "qward.run")
    assert run["attributes"]["qward.model_sha256"] == info.model_sha256
    assert run["attributes"]["qward.seed"] == seed
    core_run = next(s for s in spans if s["name"] == "qward.core.run")
    children = [s for s in spans if s["trace_id"] == core_run["trace_id"]]
    expected = {"qward.decrypt", "qward.run", "qward.log.append_publish"}
    if signing == "per-receipt":
        expected.add("qward.sign")
    assert expected <= {s["name"] for s in children}
    keystore = (tmp_path / "state" / "keystore.key").read_bytes()
    assert keystore.hex() not in trace_file.read_text()
