"""One evidence bundle with the whole story, verified offline: a run of a signed model (the signer
in the receipt), its replay verdict, and a ledger anchor covering both, on a real anvil node."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anchoring.anvil_node import AnvilNode, anvil_binary, free_port
from anchoring.test_core_anchoring import anchor_entries, configure
from signers import make_key_signer

from qward.crypto.envelope import seal
from qward.provenance.model_signature import SIGNATURE_HEADER, ModelSignature, key_identity
from qward.provenance.signer_policy import SIGNER_POLICY_FILE
from qward.receipts.receipt import ReceiptBundle
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes, iris_inputs

MODEL = "iris-mlp.onnx"


@pytest.fixture(scope="module")
def node() -> Iterator[AnvilNode]:
    running = AnvilNode(anvil_binary(), free_port(), block_time=1)
    yield running
    running.stop()


def _qward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args], capture_output=True, text=True, timeout=180
    )


def _wait_for_anchor_beyond(state: Path, index: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(entry["size"] > index for _, entry in anchor_entries(state)):
            return
        time.sleep(0.25)
    raise AssertionError(f"no anchor covers entry {index} after {timeout} s")


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(base64.b64decode(item["entry"])) for item in bundle["items"]]


def test_an_exported_bundle_tells_the_whole_story(node: AnvilNode, tmp_path: Path) -> None:
    signer = make_key_signer(tmp_path / "key")
    (tmp_path / MODEL).write_bytes(example_bytes(MODEL))
    signer.sign(tmp_path / MODEL, tmp_path / "model.sig")
    pem = signer.public.read_text()
    identity = key_identity(pem.encode())
    state = tmp_path / "state"
    configure(state, node.url, every_checkpoints=1)
    policy = {"require": True, "signers": [{"method": "key", "identity": identity, "pem": pem}]}
    (state / SIGNER_POLICY_FILE).write_text(json.dumps(policy))

    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            sdk = Client(connection, trust=connection.trust())
            signature = ModelSignature(
                bundle=(tmp_path / "model.sig").read_bytes(), file_name=MODEL, identity=identity
            )
            sealed = seal(
                example_bytes(MODEL),
                recipient=sdk.trust.hpke_recipient,
                content_type="application/onnx",
                extra_header={SIGNATURE_HEADER: signature.to_json()},
            )
            model = connection.register_model(sealed, name="iris-signed")
            inputs, seed = iris_inputs()
            run = sdk.run(model.model_sha256, inputs, seed=seed)
            replay = sdk.replay(run.receipt, inputs)
            _wait_for_anchor_beyond(state, replay.log_index)
            (tmp_path / "trust.json").write_bytes(sdk.trust.to_bytes())
    finally:
        core.stop()

    bundle_path = tmp_path / "evidence.json"
    exported = _qward("audit", "export", "-o", str(bundle_path), "--state-dir", str(state))
    assert exported.returncode == 0, exported.stderr
    assert (
        "1 receipts and 1 replay verdicts" in exported.stdout
        and "ledger anchors" in exported.stdout
    )

    bundle = json.loads(bundle_path.read_text())
    entries = _entries(bundle)
    (receipt,) = [e for e in entries if e["type"] == "qward/receipt/v2"]
    assert receipt["body"]["model_signature"]["identity"] == identity
    assert receipt["body"] == ReceiptBundle.from_bytes(run.receipt).body
    (verdict,) = [e for e in entries if e["type"] == "qward/replay-verdict/v1"]
    assert verdict["verdict"] == "bitwise-identical"
    assert verdict["receipt"]["receipt_id"] == receipt["body"]["receipt_id"]
    anchors = [e for e in entries if e["type"] == "qward/anchor/v1"]
    assert anchors and bundle["anchors"]

    offline = _qward("audit", "verify", str(bundle_path), "--trust", str(tmp_path / "trust.json"))
    assert offline.returncode == 0, offline.stderr
    assert "1 receipts, 1 replay verdicts" in offline.stdout
    assert "proof binds the signed note (offline)" in offline.stdout
    online = _qward(
        "audit", "verify", str(bundle_path), "--trust", str(tmp_path / "trust.json"),
        "--rpc-url", node.url, "--confirmations", "1",
    )  # fmt: skip
    assert online.returncode == 0, online.stderr
    assert "offline" not in online.stdout.split("anchor #", 1)[1]
