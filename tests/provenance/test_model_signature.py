"""Verifying OpenSSF model-signing signatures over a model file (no core needed)."""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

import pytest
from signers import CertificateSigner, KeySigner, flipped_weight, make_ca_signer, make_key_signer

from qward.errors import FormatError, InputError, SignatureError, VerificationError
from qward.provenance.model_signature import (
    ModelSignature,
    SignatureRecord,
    TrustedSigner,
    key_identity,
    verify_model_signature,
)
from qward.provenance.signer_policy import SignerPolicy

from conftest import example_bytes

MODEL = "iris-mlp.onnx"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / MODEL
    path.write_bytes(example_bytes(MODEL))
    return path


@pytest.fixture(scope="module")
def key_signer(tmp_path_factory: pytest.TempPathFactory) -> KeySigner:
    return make_key_signer(tmp_path_factory.mktemp("key"))


@pytest.fixture(scope="module")
def ca_signer(tmp_path_factory: pytest.TempPathFactory) -> CertificateSigner:
    return make_ca_signer(tmp_path_factory.mktemp("ca"))


def _signed(signer: KeySigner | CertificateSigner, model: Path, identity: str) -> ModelSignature:
    sig = model.parent / f"{type(signer).__name__}.sig"
    signer.sign(model, sig)
    return ModelSignature(bundle=sig.read_bytes(), file_name=model.name, identity=identity)


def _key(signer: KeySigner) -> TrustedSigner:
    pem = signer.public.read_bytes()
    return TrustedSigner(method="key", identity=key_identity(pem), pem=pem)


def test_key_signature_verifies_and_names_the_key(model_file: Path, key_signer: KeySigner) -> None:
    trusted = _key(key_signer)
    signature = _signed(key_signer, model_file, trusted.identity)
    record = verify_model_signature(model_file.read_bytes(), signature, signer=trusted)
    assert record == SignatureRecord(
        method="key",
        identity=trusted.identity,
        signature_sha256=hashlib.sha256(signature.bundle).hexdigest(),
    )
    # The identity is the SHA-256 of the key's SubjectPublicKeyInfo DER, spelled out.
    assert trusted.identity.startswith("key:sha256:") and len(trusted.identity) == 11 + 64


def test_one_flipped_byte_is_refused_naming_the_file(
    model_file: Path, key_signer: KeySigner
) -> None:
    trusted = _key(key_signer)
    signature = _signed(key_signer, model_file, trusted.identity)
    model = flipped_weight(model_file.read_bytes())
    with pytest.raises(VerificationError, match=r"model file 'iris-mlp.onnx' does not match"):
        verify_model_signature(model, signature, signer=trusted)


def test_another_key_is_refused(model_file: Path, key_signer: KeySigner, tmp_path: Path) -> None:
    signature = _signed(key_signer, model_file, _key(key_signer).identity)
    other = _key(make_key_signer(tmp_path / "other"))
    claimed = ModelSignature(bundle=signature.bundle, file_name=MODEL, identity=other.identity)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_model_signature(model_file.read_bytes(), claimed, signer=other)


def test_a_tampered_signature_is_refused(model_file: Path, key_signer: KeySigner) -> None:
    trusted = _key(key_signer)
    signature = _signed(key_signer, model_file, trusted.identity)
    doc = json.loads(signature.bundle)
    raw = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[10] ^= 0x01  # inside r of the DER ECDSA signature
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    bundle = json.dumps(doc).encode()
    tampered = ModelSignature(bundle=bundle, file_name=MODEL, identity=trusted.identity)
    with pytest.raises(VerificationError):
        verify_model_signature(model_file.read_bytes(), tampered, signer=trusted)


def test_identity_must_be_the_key(key_signer: KeySigner) -> None:
    with pytest.raises(InputError, match="is not the identity of the given key"):
        TrustedSigner(
            method="key", identity="key:sha256:" + "0" * 64, pem=key_signer.public.read_bytes()
        )


def test_certificate_signature_verifies_against_the_pinned_root(
    model_file: Path, ca_signer: CertificateSigner
) -> None:
    trusted = TrustedSigner(
        method="certificate", identity="ml@example.com", pem=ca_signer.root.read_bytes()
    )
    signature = _signed(ca_signer, model_file, "ml@example.com")
    record = verify_model_signature(model_file.read_bytes(), signature, signer=trusted)
    assert (record.method, record.identity) == ("certificate", "ml@example.com")


def test_certificate_for_another_identity_is_refused(
    model_file: Path, ca_signer: CertificateSigner
) -> None:
    trusted = TrustedSigner(
        method="certificate", identity="boss@example.com", pem=ca_signer.root.read_bytes()
    )
    signature = _signed(ca_signer, model_file, "boss@example.com")
    with pytest.raises(SignatureError, match=r"signing certificate is for .*ml@example.com"):
        verify_model_signature(model_file.read_bytes(), signature, signer=trusted)


def test_certificate_from_another_root_is_refused(
    model_file: Path, ca_signer: CertificateSigner, tmp_path: Path
) -> None:
    stranger = make_ca_signer(tmp_path / "stranger")
    trusted = TrustedSigner(
        method="certificate", identity="ml@example.com", pem=ca_signer.root.read_bytes()
    )
    signature = _signed(stranger, model_file, "ml@example.com")
    with pytest.raises(SignatureError, match="does not chain to the pinned root"):
        verify_model_signature(model_file.read_bytes(), signature, signer=trusted)


def test_certificate_flipped_byte_names_the_file(
    model_file: Path, ca_signer: CertificateSigner
) -> None:
    trusted = TrustedSigner(
        method="certificate", identity="ml@example.com", pem=ca_signer.root.read_bytes()
    )
    signature = _signed(ca_signer, model_file, "ml@example.com")
    model = bytearray(model_file.read_bytes())
    model[-1] ^= 0x80
    with pytest.raises(VerificationError, match=r"'iris-mlp\.onnx' does not match"):
        verify_model_signature(bytes(model), signature, signer=trusted)


@pytest.mark.parametrize("junk", [b"", b"not json", b"[]", b'{"verificationMaterial": 1}'])
def test_garbage_signatures_are_clear_errors(
    model_file: Path, key_signer: KeySigner, junk: bytes
) -> None:
    trusted = _key(key_signer)
    with pytest.raises((FormatError, InputError)):
        signature = ModelSignature(bundle=junk, file_name=MODEL, identity=trusted.identity)
        verify_model_signature(model_file.read_bytes(), signature, signer=trusted)


def test_policy_requires_a_signature_and_a_listed_signer(
    model_file: Path, key_signer: KeySigner
) -> None:
    trusted = _key(key_signer)
    signature = _signed(key_signer, model_file, trusted.identity)
    model = model_file.read_bytes()
    with pytest.raises(SignatureError, match="requires signed models"):
        SignerPolicy(require=True, signers=(trusted,)).check(model, None)
    assert SignerPolicy().check(model, None) is None
    with pytest.raises(SignatureError, match="is not trusted by this core"):
        SignerPolicy().check(model, signature)
    record = SignerPolicy(require=True, signers=(trusted,)).check(model, signature)
    assert record is not None and record.identity == trusted.identity


@pytest.mark.parametrize(
    "text",
    [b"{", b"[]", b'{"require": "yes"}', b'{"signers": [{"method": "key"}]}', b'{"x": 1}'],
)
def test_bad_policy_files_fail_closed(text: bytes) -> None:
    with pytest.raises(FormatError):
        SignerPolicy.from_bytes(text)


def test_no_plaintext_is_left_behind(model_file: Path, key_signer: KeySigner) -> None:
    trusted = _key(key_signer)
    signature = _signed(key_signer, model_file, trusted.identity)
    before = set(Path(tempfile.gettempdir()).glob("qward-sig-*"))
    verify_model_signature(model_file.read_bytes(), signature, signer=trusted)
    with pytest.raises(VerificationError):
        verify_model_signature(flipped_weight(model_file.read_bytes()), signature, signer=trusted)
    assert set(Path(tempfile.gettempdir()).glob("qward-sig-*")) == before
