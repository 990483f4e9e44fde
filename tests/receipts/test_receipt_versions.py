"""Receipt v1 (per-receipt signature) and v2 (checkpoint-signed) side by side: a core switched
from one setting to the other keeps verifying its old receipts, and neither version passes as the
other."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from qward.audit import export_evidence, verify_evidence
from qward.encoding import canonical_json
from qward.errors import CoreUnavailableError, FormatError, ProofError
from qward.receipts.receipt import ReceiptBundle
from qward.receipts.trust import TrustBundle
from qward.sdk.client import Client, verify
from qward.sdk.core_process import CoreProcess
from qward.tlog.store import SQLiteLogStore

from conftest import example_bytes, iris_inputs


def _run_once(state: Path) -> tuple[bytes, TrustBundle]:
    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            sdk = Client(connection, trust=connection.trust())
            model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris")
            inputs, seed = iris_inputs()
            return sdk.run(model.model_sha256, inputs, seed=seed).receipt, sdk.trust
    finally:
        core.stop()


@pytest.fixture(scope="module")
def receipts(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[bytes, bytes, TrustBundle, Path]]:
    state = tmp_path_factory.mktemp("versions") / "state"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("QWARD_RECEIPT_SIGNATURES", "per-receipt")
        v1, _ = _run_once(state)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("QWARD_RECEIPT_SIGNATURES", raising=False)
        v2, trust = _run_once(state)
    yield v1, v2, trust, state


def test_each_setting_issues_its_version(
    receipts: tuple[bytes, bytes, TrustBundle, Path],
) -> None:
    v1, v2, _, _ = receipts
    old, new = ReceiptBundle.from_bytes(v1), ReceiptBundle.from_bytes(v2)
    assert old.body["format"] == "qward/receipt/v1" and old.signature is not None
    assert old.body["signer"]["suite"] == "MLDSA65_ED25519"
    assert {"key_id": old.signature.key_id, "purpose": "sign-receipt"} in old.body["key_uses"]
    assert new.body["format"] == "qward/receipt/v2" and new.signature is None
    assert new.body["signer"] == {"kind": "checkpoint"}
    assert all(use["purpose"] != "sign-receipt" for use in new.body["key_uses"])


def test_old_receipts_still_verify_beside_new_ones(
    receipts: tuple[bytes, bytes, TrustBundle, Path],
) -> None:
    v1, v2, trust, state = receipts
    assert verify(v1, trust=trust).bundle.signature is not None
    assert verify(v2, trust=trust).bundle.signature is None
    # An evidence bundle over both versions verifies offline.
    with SQLiteLogStore.open(state / "log.sqlite") as store:
        indices = [ReceiptBundle.from_bytes(r).index for r in (v1, v2)]
        bundle = export_evidence(store, trust, indices)
    assert verify_evidence(bundle, trust=trust).receipts == 2


def _doc(receipt: bytes) -> dict[str, object]:
    doc = json.loads(receipt)
    assert isinstance(doc, dict)
    return doc


def test_a_v2_receipt_cannot_carry_a_signature_or_claim_v1(
    receipts: tuple[bytes, bytes, TrustBundle, Path],
) -> None:
    v1, v2, _, _ = receipts
    with_signature = {**_doc(v2), "signature": _doc(v1)["signature"]}
    with pytest.raises(FormatError, match="expected exactly"):
        ReceiptBundle.from_bytes(canonical_json(with_signature))
    as_v1 = {**_doc(v2), "format": "qward/receipt-bundle/v1"}
    with pytest.raises(FormatError):
        ReceiptBundle.from_bytes(canonical_json(as_v1))


def test_a_v1_receipt_stripped_of_its_signature_is_refused(
    receipts: tuple[bytes, bytes, TrustBundle, Path],
) -> None:
    v1, _, trust, _ = receipts
    stripped = _doc(v1)
    del stripped["signature"]
    stripped["format"] = "qward/receipt-bundle/v2"
    with pytest.raises(FormatError, match="does not match"):
        ReceiptBundle.from_bytes(canonical_json(stripped))
    # Rewriting the body as v2 too changes the logged entry: the inclusion proof fails.
    body = stripped["body"]
    assert isinstance(body, dict)
    body.update(format="qward/receipt/v2", signer={"kind": "checkpoint"})
    with pytest.raises(ProofError):
        verify(canonical_json(stripped), trust=trust)


def test_a_v1_body_cannot_claim_the_checkpoint_as_its_signer(
    receipts: tuple[bytes, bytes, TrustBundle, Path],
) -> None:
    v1, _, _, _ = receipts
    doc = _doc(v1)
    body = doc["body"]
    assert isinstance(body, dict)
    body["signer"] = {"kind": "checkpoint"}
    with pytest.raises(FormatError, match="checkpoint-signed"):
        ReceiptBundle.from_bytes(canonical_json(doc))


def test_an_unknown_setting_stops_the_core_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWARD_RECEIPT_SIGNATURES", "sometimes")
    with pytest.raises(CoreUnavailableError, match="QWARD_RECEIPT_SIGNATURES"):
        CoreProcess.start(tmp_path / "state")
