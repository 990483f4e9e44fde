"""Receipt signatures under every suite: each component must verify; the hybrid form is stable."""

from __future__ import annotations

import dataclasses
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qward.crypto.keys import ReceiptVerifyKey, key_id_for
from qward.crypto.signatures import ReceiptSignature, verify_signature
from qward.encoding import b64encode
from qward.errors import FormatError, SignatureError
from qward.protected.signing import ReceiptSigner, receipt_private_keys
from qward.suites import ED25519, MLDSA65, MLDSA65_ED25519, MLDSA87

SUITES = (MLDSA65_ED25519, MLDSA65, MLDSA87, ED25519)
_SEED_NAMES = {"mldsa65": "mldsa65_seed", "mldsa87": "mldsa87_seed", "ed25519": "ed25519"}
CTX = b"qward/test/v1"


def signer(suite: str) -> ReceiptSigner:
    seeds = {name: secrets.token_bytes(32) for name in _SEED_NAMES.values()}
    return ReceiptSigner(suite=suite, keys=receipt_private_keys(suite, seeds))


SIGNERS = {suite: signer(suite) for suite in SUITES}
OTHERS = {suite: signer(suite) for suite in SUITES}


@pytest.mark.parametrize("suite", SUITES)
def test_sign_verify_and_wire_round_trip(suite: str) -> None:
    s = SIGNERS[suite]
    sig = s.sign(b"message", context=CTX)
    assert sig.suite == suite
    verify_signature(
        b"message", ReceiptSignature.from_json(sig.to_json()), s.public_key, context=CTX
    )
    assert ReceiptVerifyKey.from_json(s.public_key.to_json()) == s.public_key


def test_the_hybrid_wire_form_and_key_id_are_unchanged() -> None:
    # Receipts and trust bundles written before suites were generalised must still parse and
    # keep their key ids: the key id covers ML-DSA-65 then Ed25519 public bytes, as it always did.
    key = SIGNERS[MLDSA65_ED25519].public_key
    parts = dict(key.parts)
    assert key.key_id == key_id_for(MLDSA65_ED25519, parts["mldsa65"] + parts["ed25519"])
    assert set(key.to_json()) == {"suite", "key_id", "mldsa65", "ed25519"}
    sig = SIGNERS[MLDSA65_ED25519].sign(b"m", context=CTX).to_json()
    assert set(sig) == {"suite", "key_id", "mldsa65", "ed25519"}


@given(st.binary(max_size=64), st.sampled_from(SUITES))
def test_other_message_fails(other: bytes, suite: str) -> None:
    sig = SIGNERS[suite].sign(b"message", context=CTX)
    if other != b"message":
        with pytest.raises(SignatureError):
            verify_signature(other, sig, SIGNERS[suite].public_key, context=CTX)


@pytest.mark.parametrize("suite", SUITES)
def test_context_separates_domains(suite: str) -> None:
    sig = SIGNERS[suite].sign(b"message", context=CTX)
    with pytest.raises(SignatureError):
        verify_signature(b"message", sig, SIGNERS[suite].public_key, context=b"qward/other/v1")


@pytest.mark.parametrize(("half", "name"), [(0, "ML-DSA-65"), (1, "Ed25519")])
def test_each_half_of_a_hybrid_signature_is_required(half: int, name: str) -> None:
    good = SIGNERS[MLDSA65_ED25519].sign(b"message", context=CTX)
    foreign = OTHERS[MLDSA65_ED25519].sign(b"message", context=CTX)
    parts = list(good.parts)
    parts[half] = foreign.parts[half]
    mixed = dataclasses.replace(good, parts=tuple(parts))
    with pytest.raises(SignatureError, match=name):
        verify_signature(b"message", mixed, SIGNERS[MLDSA65_ED25519].public_key, context=CTX)


def test_a_signature_under_another_suite_is_refused() -> None:
    # A downgrade: an Ed25519-only signature presented for a hybrid key.
    key = SIGNERS[MLDSA65_ED25519].public_key
    classical = SIGNERS[ED25519].sign(b"message", context=CTX)
    forged = dataclasses.replace(classical, key_id=key.key_id)
    with pytest.raises(SignatureError, match="suite"):
        verify_signature(b"message", forged, key, context=CTX)


def test_wrong_key_id_is_named() -> None:
    sig = OTHERS[MLDSA87].sign(b"message", context=CTX)
    with pytest.raises(SignatureError, match=OTHERS[MLDSA87].key_id):
        verify_signature(b"message", sig, SIGNERS[MLDSA87].public_key, context=CTX)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(key_id=OTHERS[MLDSA65_ED25519].key_id),
        lambda d: d.update(suite=MLDSA87),
        lambda d: d.pop("ed25519"),
        lambda d: d.update(extra="x"),
        lambda d: d.update(mldsa65=b64encode(b"short")),
    ],
)
def test_malformed_keys_are_refused(change: object) -> None:
    doc = SIGNERS[MLDSA65_ED25519].public_key.to_json()
    change(doc)  # type: ignore[operator]
    with pytest.raises(FormatError):
        ReceiptVerifyKey.from_json(doc)


@pytest.mark.parametrize("suite", SUITES)
def test_malformed_signatures_are_refused(suite: str) -> None:
    doc = SIGNERS[suite].sign(b"m", context=CTX).to_json()
    name = next(k for k in doc if k not in ("suite", "key_id"))
    with pytest.raises(FormatError, match="lengths"):
        ReceiptSignature.from_json({**doc, name: b64encode(b"\0" * 10)})
    with pytest.raises(FormatError):
        ReceiptSignature.from_json({**doc, "suite": "RSA2048"})


def test_signer_repr_has_no_secret() -> None:
    s = SIGNERS[MLDSA65_ED25519]
    assert all("redacted" in repr(handle) for handle in s._keys.values())
    assert s.key_id in repr(s) and "seed" not in repr(s)
