"""Sealed artifacts: round trip, and every kind of damage is refused without plaintext."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.crypto.envelope import MAGIC, parse_sealed, seal
from qward.crypto.keys import HPKERecipientKey
from qward.errors import DecryptionError, FormatError, UnknownKeyError
from qward.protected.handles import KeyHandle
from qward.protected.opening import open_sealed

CT = "application/onnx"


def _keypair() -> tuple[HPKERecipientKey, dict[str, KeyHandle[hpke.MLKEM768X25519PrivateKey]]]:
    kem, xk = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    public = HPKERecipientKey.from_hpke_parts(kem.public_key(), xk.public_key())
    handle = KeyHandle(
        purpose="unseal", key_id=public.key_id, key=hpke.MLKEM768X25519PrivateKey(kem, xk)
    )
    return public, {public.key_id: handle}


PUBLIC, KEYS = _keypair()
OTHER_PUBLIC, OTHER_KEYS = _keypair()
SECRET = b"model weights: " + bytes(range(256)) * 4
BLOB = seal(SECRET, recipient=PUBLIC, content_type=CT)


def _open(blob: bytes, keys: dict[str, KeyHandle[hpke.MLKEM768X25519PrivateKey]] = KEYS) -> bytes:
    return open_sealed(blob, keys=keys, limit=1 << 20, expected_content_type=CT)


def test_round_trip_and_header_names_suite_and_key() -> None:
    assert _open(BLOB) == SECRET
    artifact = parse_sealed(BLOB)
    assert artifact.suite == "MLKEM768_X25519_HKDF_SHA256_AES_256_GCM"
    assert artifact.key_id == PUBLIC.key_id
    assert SECRET not in BLOB


def test_two_seals_of_same_plaintext_differ() -> None:
    assert seal(SECRET, recipient=PUBLIC, content_type=CT) != BLOB


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(BLOB) - 1),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_flipped_byte_is_refused(position: int, flip: int) -> None:
    damaged = bytearray(BLOB)
    damaged[position] ^= flip
    with pytest.raises((FormatError, DecryptionError, UnknownKeyError)):
        _open(bytes(damaged))


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(BLOB) - 1))
def test_truncation_is_refused(cut: int) -> None:
    with pytest.raises((FormatError, DecryptionError)):
        _open(BLOB[:cut])


def test_wrong_key_is_named() -> None:
    with pytest.raises(UnknownKeyError, match=PUBLIC.key_id):
        _open(BLOB, OTHER_KEYS)


def test_wrapped_key_moved_to_other_artifact_is_refused() -> None:
    other = seal(b"another object", recipient=PUBLIC, content_type=CT)
    a, b = parse_sealed(BLOB), parse_sealed(other)
    # Splice: BLOB's header and payload with the other artifact's key wrap.
    wrap_a = BLOB[len(MAGIC) + 4 + len(a.header) : len(BLOB) - len(a.ciphertext)]
    wrap_b = other[len(MAGIC) + 4 + len(b.header) : len(other) - len(b.ciphertext)]
    spliced = BLOB.replace(wrap_a, wrap_b)
    assert spliced != BLOB
    with pytest.raises(DecryptionError):
        _open(spliced)


def test_wrong_content_type_is_refused() -> None:
    blob = seal(SECRET, recipient=PUBLIC, content_type="application/vnd.qward.tensors")
    with pytest.raises(DecryptionError, match="expected 'application/onnx'"):
        _open(blob)


def test_over_limit_is_refused_before_decrypting() -> None:
    with pytest.raises(FormatError, match="limit"):
        open_sealed(BLOB, keys=KEYS, limit=100, expected_content_type=CT)


@pytest.mark.parametrize("garbage", [b"", b"QWSEAL", b"not sealed at all", MAGIC + b"\xff" * 8])
def test_garbage_is_a_format_error(garbage: bytes) -> None:
    with pytest.raises(FormatError):
        _open(garbage)
