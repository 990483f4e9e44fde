"""Hybrid ML-DSA-65 + Ed25519 signatures: both halves must verify."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from hypothesis import given
from hypothesis import strategies as st

from qward.crypto.keys import HybridVerifyKey
from qward.crypto.signatures import HybridSignature, verify_hybrid
from qward.errors import FormatError, SignatureError
from qward.protected.signing import HybridSigner

SIGNER = HybridSigner(
    mldsa_key=mldsa.MLDSA65PrivateKey.generate(), ed_key=ed25519.Ed25519PrivateKey.generate()
)
OTHER = HybridSigner(
    mldsa_key=mldsa.MLDSA65PrivateKey.generate(), ed_key=ed25519.Ed25519PrivateKey.generate()
)
CTX = b"qward/test/v1"


def test_sign_verify_and_wire_round_trip() -> None:
    sig = SIGNER.sign(b"message", context=CTX)
    verify_hybrid(
        b"message", HybridSignature.from_json(sig.to_json()), SIGNER.public_key, context=CTX
    )
    assert HybridVerifyKey.from_json(SIGNER.public_key.to_json()) == SIGNER.public_key


@given(st.binary(max_size=64))
def test_other_message_fails(other: bytes) -> None:
    sig = SIGNER.sign(b"message", context=CTX)
    if other != b"message":
        with pytest.raises(SignatureError):
            verify_hybrid(other, sig, SIGNER.public_key, context=CTX)


def test_context_separates_domains() -> None:
    sig = SIGNER.sign(b"message", context=CTX)
    with pytest.raises(SignatureError):
        verify_hybrid(b"message", sig, SIGNER.public_key, context=b"qward/other/v1")


@pytest.mark.parametrize("half", ["mldsa65", "ed25519"])
def test_each_half_is_required(half: str) -> None:
    good = SIGNER.sign(b"message", context=CTX)
    foreign = OTHER.sign(b"message", context=CTX)
    mixed = dataclasses.replace(good, **{half: getattr(foreign, half)})
    with pytest.raises(SignatureError, match="ML-DSA-65" if half == "mldsa65" else "Ed25519"):
        verify_hybrid(b"message", mixed, SIGNER.public_key, context=CTX)


def test_wrong_key_id_is_named() -> None:
    sig = OTHER.sign(b"message", context=CTX)
    with pytest.raises(SignatureError, match=OTHER.key_id):
        verify_hybrid(b"message", sig, SIGNER.public_key, context=CTX)


def test_stated_key_id_must_match_key() -> None:
    doc = SIGNER.public_key.to_json()
    doc["key_id"] = OTHER.key_id
    with pytest.raises(FormatError, match="key_id"):
        HybridVerifyKey.from_json(doc)


def test_signer_repr_has_no_secret() -> None:
    assert "redacted" in repr(SIGNER._mldsa)
    assert SIGNER.key_id in repr(SIGNER)
