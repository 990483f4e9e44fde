"""Rotating the log's checkpoint keys: a rollover that old and new pins both follow."""

from __future__ import annotations

import json

import pytest

from qward.errors import SignatureError
from qward.protected.key_admin import op_keys_list, op_keys_retire, op_keys_rotate
from qward.protected.service import CoreService
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import Verifier
from qward.sdk.client import seal_input, seal_model
from qward.tlog.audit import verify_log
from qward.tlog.note import note_signatures

from conftest import example_bytes, iris_inputs


def _run(service: CoreService, model: str) -> bytes:
    inputs, seed = iris_inputs()
    reply, _ = service.dispatch(
        {"op": "run", "model_sha256": model, "seed": seed}, seal_input(inputs, trust=service.trust)
    )
    return str(reply["receipt"]).encode()


def _checkpoint_lines(receipt: bytes) -> int:
    note = json.loads(receipt)["log"]["checkpoint"].encode()
    return len(note_signatures(note)[1])


def _audit(service: CoreService, trust: TrustBundle) -> int:
    report = verify_log(
        service._auditor._store,
        origin=trust.origin,
        verifiers=trust.log_verifiers,
        key_sets=trust.log_key_sets,
    )
    return report.checkpoints


def test_checkpoint_keys_roll_over_and_history_stays_verifiable(service: CoreService) -> None:
    reply, _ = service.dispatch(
        {"op": "register_model", "name": "iris"},
        seal_model(example_bytes("iris-mlp.onnx"), trust=service.trust),
    )
    model = str(reply["model_sha256"])
    first_trust = service.trust
    assert first_trust.log_key_versions == ()
    r1 = _run(service, model)
    assert _checkpoint_lines(r1) == 2

    rotated, _ = op_keys_rotate(service, {"purpose": "checkpoint-signing"}, b"")
    rollover_trust = service.trust
    assert len(rollover_trust.log_key_sets) == 2
    assert TrustBundle.from_bytes(rollover_trust.to_bytes()) == rollover_trust
    r2 = _run(service, model)
    # During the rollover the new and the old version both sign: either pin verifies.
    assert _checkpoint_lines(r2) == 4
    for trust in (first_trust, rollover_trust):
        Verifier(trust=trust).verify(r2)
    Verifier(trust=rollover_trust).verify(r1)

    old = rotated["previous_key_id"]
    op_keys_retire(service, {"key_id": old}, b"")
    final_trust = service.trust
    r3 = _run(service, model)
    assert _checkpoint_lines(r3) == 2
    for receipt in (r1, r2, r3):
        Verifier(trust=final_trust).verify(receipt)
    # A client that never updated its pin stops at the end of the rollover, loudly.
    with pytest.raises(SignatureError, match="no signature from a known key"):
        Verifier(trust=first_trust).verify(r3)
    # The whole log, across both key versions, still audits clean.
    assert _audit(service, final_trust) >= 3
    states = {k["key_id"]: k["state"] for k in op_keys_list(service, {}, b"")[0]["keys"]}
    assert states[old] == "retired"


def test_half_of_a_key_version_is_not_enough(service: CoreService) -> None:
    reply, _ = service.dispatch(
        {"op": "register_model", "name": "iris"},
        seal_model(example_bytes("iris-mlp.onnx"), trust=service.trust),
    )
    receipt = json.loads(_run(service, str(reply["model_sha256"])))
    note = receipt["log"]["checkpoint"]
    text, lines = note.split("\n\n", 1)
    receipt["log"]["checkpoint"] = text + "\n\n" + lines.split("\n", 1)[1]  # drop one signature
    from qward.encoding import canonical_json

    with pytest.raises(SignatureError):
        Verifier(trust=service.trust).verify(canonical_json(receipt))
