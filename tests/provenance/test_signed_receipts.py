"""Receipts of a signed model in both receipt versions, across a core restart, beside receipts of
an unsigned model (which keep their old shape and verify as before)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from signers import flipped_weight, make_key_signer

from qward.crypto.envelope import seal
from qward.encoding import canonical_json
from qward.errors import FormatError, VerificationError
from qward.provenance.model_signature import SIGNATURE_HEADER, ModelSignature, key_identity
from qward.provenance.signer_policy import SIGNER_POLICY_FILE
from qward.receipts.receipt import check_body
from qward.sdk.client import Client, verify
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes, iris_inputs

MODEL = "iris-mlp.onnx"


def _run(state: Path, sealed: bytes, name: str) -> tuple[bytes, Client]:
    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            sdk = Client(connection, trust=connection.trust())
            info = connection.register_model(sealed, name=name)
            inputs, seed = iris_inputs()
            return sdk.run(info.model_sha256, inputs, seed=seed).receipt, sdk
    finally:
        core.stop()


def test_signed_model_receipts_v1_v2_and_unsigned(tmp_path: Path) -> None:
    signer = make_key_signer(tmp_path / "key")
    (tmp_path / MODEL).write_bytes(example_bytes(MODEL))
    signer.sign(tmp_path / MODEL, tmp_path / "model.sig")
    pem = signer.public.read_text()
    identity = key_identity(pem.encode())
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    policy = {"signers": [{"method": "key", "identity": identity, "pem": pem}]}
    (state / SIGNER_POLICY_FILE).write_text(json.dumps(policy))
    # The trust bundle (and so the sealing key) is the core's; one start to learn it.
    core = CoreProcess.start(state)
    with core.client() as connection:
        trust = connection.trust()
    core.stop()
    signature = ModelSignature(
        bundle=(tmp_path / "model.sig").read_bytes(), file_name=MODEL, identity=identity
    )
    signed = seal(
        example_bytes(MODEL),
        recipient=trust.hpke_recipient,
        content_type="application/onnx",
        extra_header={SIGNATURE_HEADER: signature.to_json()},
    )
    unsigned = seal(
        flipped_weight(example_bytes(MODEL)),
        recipient=trust.hpke_recipient,
        content_type="application/onnx",
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("QWARD_RECEIPT_SIGNATURES", "per-receipt")
        v1, _ = _run(state, signed, "iris-signed")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("QWARD_RECEIPT_SIGNATURES", raising=False)
        v2, _ = _run(state, signed, "iris-signed")
        old_style, _ = _run(state, unsigned, "iris-unsigned")
    for receipt, version in ((v1, "qward/receipt/v1"), (v2, "qward/receipt/v2")):
        body = verify(receipt, trust=trust).body
        assert body["format"] == version
        assert body["model_signature"]["identity"] == identity
    assert "model_signature" not in verify(old_style, trust=trust).body
    for name, receipt in (("v1", v1), ("v2", v2), ("old", old_style)):
        path = tmp_path / f"{name}.json"
        path.write_bytes(receipt)
        result = subprocess.run(
            [sys.executable, "-m", "qward", "verify", str(path), "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, (name, result.stderr)
    # Changing the recorded signer breaks the receipt: the member is covered like the rest.
    data = v2.replace(identity.encode(), ("key:sha256:" + "0" * 64).encode())
    with pytest.raises(VerificationError):
        verify(data, trust=trust)


@pytest.mark.parametrize(
    "member",
    [
        {"method": "key", "identity": "x"},
        {"method": "pgp", "identity": "x", "signature_sha256": "0" * 64},
        {"method": "key", "identity": "x", "signature_sha256": "XYZ"},
        {"method": "key", "identity": 1, "signature_sha256": "0" * 64},
    ],
)
def test_malformed_model_signature_members_are_refused(member: dict[str, object]) -> None:
    body = {
        "format": "qward/receipt/v2",
        "receipt_id": "r",
        "issued_at": "2026-01-01T00:00:00Z",
        "model": {"sha256": "a" * 64},
        "input": {"sha256": "b" * 64},
        "output": {"sha256": "c" * 64},
        "parameters": {},
        "seed": 0,
        "runtime": {},
        "isolation": {},
        "key_uses": [],
        "log": {"origin": "o"},
        "signer": {"kind": "checkpoint"},
    }
    check_body(body)  # the old shape, without the member, is still accepted
    check_body(
        {
            **body,
            "model_signature": {"method": "key", "identity": "x", "signature_sha256": "d" * 64},
        }
    )
    with pytest.raises(FormatError, match="model_signature"):
        check_body({**body, "model_signature": member})
    assert canonical_json(body)  # bodies stay canonical-JSON encodable
