"""A signed model end to end: `qward seal --require-signature`, the core's second check at
registration, the registration entry, the receipt, and `qward verify` (real core, real CLI)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from signers import CertificateSigner, KeySigner, flipped_weight, make_ca_signer, make_key_signer

from qward.crypto.envelope import seal
from qward.errors import QwardError
from qward.provenance.model_signature import SIGNATURE_HEADER, ModelSignature, key_identity
from qward.provenance.signer_policy import SIGNER_POLICY_FILE
from qward.receipts.receipt import ReceiptBundle
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tlog.layout import TileRef, parse_entry_bundle, tile_path

from conftest import example_bytes, iris_inputs

MODEL = "iris-mlp.onnx"


def qward(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signed")
    (path / MODEL).write_bytes(example_bytes(MODEL))
    return path


@pytest.fixture(scope="module")
def key_signer(work: Path) -> KeySigner:
    signer = make_key_signer(work / "key")
    signer.sign(work / MODEL, work / "key.sig")
    return signer


@pytest.fixture(scope="module")
def ca_signer(work: Path) -> CertificateSigner:
    signer = make_ca_signer(work / "ca")
    signer.sign(work / MODEL, work / "cert.sig")
    return signer


@pytest.fixture(scope="module")
def core(
    tmp_path_factory: pytest.TempPathFactory, key_signer: KeySigner, ca_signer: CertificateSigner
) -> Iterator[CoreProcess]:
    state = tmp_path_factory.mktemp("core")
    pub = key_signer.public.read_text()
    policy = {
        "require": True,
        "signers": [
            {"method": "key", "identity": key_identity(pub.encode()), "pem": pub},
            {
                "method": "certificate",
                "identity": "ml@example.com",
                "pem": ca_signer.root.read_text(),
            },
        ],
    }
    (state / SIGNER_POLICY_FILE).write_text(json.dumps(policy))
    process = CoreProcess.start(state)
    yield process
    process.stop()


def _seal_key(
    work: Path,
    core: CoreProcess,
    key_signer: KeySigner,
    *,
    model: Path,
    identity: str | None = None,
) -> subprocess.CompletedProcess[str]:
    ident = identity or key_identity(key_signer.public.read_bytes())
    return qward(
        "seal",
        str(model),
        "-o",
        str(work / "sealed.qw"),
        "--require-signature",
        "--signature",
        str(work / "key.sig"),
        "--identity",
        ident,
        "--signer-key",
        str(key_signer.public),
        state=core.state_dir,
    )


def _log_entries(client: object) -> list[dict[str, object]]:
    checkpoint = client.checkpoint()  # type: ignore[attr-defined]
    size = int(checkpoint.split(b"\n")[1])
    assert size < 256  # one partial entry bundle holds this fresh log
    bundle = client.tile(tile_path(TileRef(level=None, index=0, width=size)))  # type: ignore[attr-defined]
    return [json.loads(e) for e in parse_entry_bundle(bundle)]


def test_seal_register_run_and_verify_with_a_key_signature(
    work: Path, core: CoreProcess, key_signer: KeySigner
) -> None:
    result = _seal_key(work, core, key_signer, model=work / MODEL)
    assert result.returncode == 0, result.stderr
    sealed = (work / "sealed.qw").read_bytes()
    identity = key_identity(key_signer.public.read_bytes())
    digest = hashlib.sha256((work / "key.sig").read_bytes()).hexdigest()
    with core.client() as connection:
        info = connection.register_model(sealed, name="iris-signed")
        entries = _log_entries(connection)
        registered = [e for e in entries if e.get("action") == "model-registered"]
        assert registered[-1]["details"]["model_signature"] == {  # type: ignore[index]
            "method": "key",
            "identity": identity,
            "signature_sha256": digest,
        }
        inputs, seed = iris_inputs()
        run = Client(connection, trust=connection.trust()).run(info.model_sha256, inputs, seed=seed)
    body = ReceiptBundle.from_bytes(run.receipt).body
    assert body["model_signature"] == {
        "method": "key",
        "identity": identity,
        "signature_sha256": digest,
    }
    (work / "receipt.json").write_bytes(run.receipt)
    verified = qward("verify", str(work / "receipt.json"), state=core.state_dir)
    assert verified.returncode == 0, verified.stderr


def test_seal_with_a_certificate_signature(
    work: Path, core: CoreProcess, ca_signer: CertificateSigner
) -> None:
    result = qward(
        "seal",
        str(work / MODEL),
        "-o",
        str(work / "sealed-cert.qw"),
        "--require-signature",
        "--signature",
        str(work / "cert.sig"),
        "--identity",
        "ml@example.com",
        "--signer-root",
        str(ca_signer.root),
        state=core.state_dir,
    )
    assert result.returncode == 0, result.stderr
    with core.client() as connection:
        info = connection.register_model((work / "sealed-cert.qw").read_bytes(), name="iris-signed")
        entries = _log_entries(connection)
    details = [e["details"] for e in entries if e.get("action") == "model-registered"][-1]
    assert details["model_signature"]["identity"] == "ml@example.com"  # type: ignore[index]
    assert details["model_signature"]["method"] == "certificate"  # type: ignore[index]
    assert info.model_sha256 == details["model_sha256"]  # type: ignore[index]


def test_seal_refuses_a_wrong_identity(
    work: Path, core: CoreProcess, ca_signer: CertificateSigner
) -> None:
    result = qward(
        "seal",
        str(work / MODEL),
        "-o",
        str(work / "never.qw"),
        "--require-signature",
        "--signature",
        str(work / "cert.sig"),
        "--identity",
        "mallory@example.com",
        "--signer-root",
        str(ca_signer.root),
        state=core.state_dir,
    )
    # Exit code 1: verification failed (README); a clear message, no traceback.
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "mallory@example.com" in result.stderr
    assert not (work / "never.qw").exists()


def test_seal_refuses_a_flipped_byte_naming_the_file(
    work: Path, core: CoreProcess, key_signer: KeySigner
) -> None:
    flipped = work / "flipped" / MODEL
    flipped.parent.mkdir()
    flipped.write_bytes(flipped_weight((work / MODEL).read_bytes()))
    result = _seal_key(work, core, key_signer, model=flipped)
    # Exit code 1: verification failed (README); a clear message, no traceback.
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "iris-mlp.onnx" in result.stderr and "does not match" in result.stderr


def test_seal_needs_signature_and_identity(work: Path, core: CoreProcess) -> None:
    result = qward(
        "seal",
        str(work / MODEL),
        "-o",
        str(work / "x.qw"),
        "--require-signature",
        state=core.state_dir,
    )
    assert result.returncode == 2, result.stderr  # bad input or usage
    assert "--signature and --identity" in result.stderr


def test_core_refuses_unsigned_models_when_required(core: CoreProcess) -> None:
    with core.client() as connection:
        client = Client(connection, trust=connection.trust())
        with pytest.raises(QwardError, match="requires signed models"):
            client.register(example_bytes(MODEL), name="iris-unsigned")


def test_core_refuses_a_signature_that_does_not_match_its_plaintext(
    work: Path, core: CoreProcess, key_signer: KeySigner
) -> None:
    # A client that skips the SDK's check: the header carries a valid signature over the
    # iris model, but the sealed plaintext has one byte flipped (still a valid ONNX file).
    data = flipped_weight((work / MODEL).read_bytes())
    signature = ModelSignature(
        bundle=(work / "key.sig").read_bytes(),
        file_name=MODEL,
        identity=key_identity(key_signer.public.read_bytes()),
    )
    with core.client() as connection:
        trust = connection.trust()
        sealed = seal(
            bytes(data),
            recipient=trust.hpke_recipient,
            content_type="application/onnx",
            extra_header={SIGNATURE_HEADER: signature.to_json()},
        )
        with pytest.raises(QwardError, match=r"'iris-mlp\.onnx' does not match"):
            connection.register_model(sealed, name="iris-forged")


def test_core_refuses_a_signer_it_does_not_list(work: Path, core: CoreProcess) -> None:
    # Validly signed, verified by the client against its own key, but the core trusts other
    # signers: the core's policy decides, and the refusal is logged.
    stranger = make_key_signer(work / "stranger")
    stranger.sign(work / MODEL, work / "stranger.sig")
    identity = key_identity(stranger.public.read_bytes())
    signature = ModelSignature(
        bundle=(work / "stranger.sig").read_bytes(), file_name=MODEL, identity=identity
    )
    with core.client() as connection:
        sealed = seal(
            example_bytes(MODEL),
            recipient=connection.trust().hpke_recipient,
            content_type="application/onnx",
            extra_header={SIGNATURE_HEADER: signature.to_json()},
        )
        with pytest.raises(QwardError, match="is not trusted by this core"):
            connection.register_model(sealed, name="iris-stranger")
        failed = [
            e for e in _log_entries(connection) if e.get("action") == "model-registration-failed"
        ]
    assert any(identity in str(e["details"]) for e in failed)


def test_a_damaged_policy_file_refuses_every_model(
    work: Path, core: CoreProcess, key_signer: KeySigner
) -> None:
    policy = core.state_dir / SIGNER_POLICY_FILE
    kept = policy.read_bytes()
    policy.write_text('{"require": false, "signers": [{"method": "key"}]}')
    try:
        with core.client() as connection:
            client = Client(connection, trust=connection.trust())
            with pytest.raises(QwardError, match=SIGNER_POLICY_FILE):
                client.register(flipped_weight(example_bytes(MODEL)), name="iris-unsigned")
    finally:
        policy.write_bytes(kept)
