"""The signature rides in the sealed model's header: authenticated (any change is refused when
the core opens the model), ignored by readers that do not know it, unable to replace members."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from qward.crypto.envelope import MAGIC, parse_sealed, seal
from qward.crypto.keys import HPKERecipientKey
from qward.encoding import canonical_json, parse_canonical_json
from qward.errors import DecryptionError, FormatError, InputError
from qward.protected.handles import KeyHandle
from qward.protected.opening import open_sealed
from qward.provenance.model_signature import SIGNATURE_HEADER, ModelSignature

CT = "application/onnx"
SIGNATURE = ModelSignature(bundle=b'{"x": 1}', file_name="m.onnx", identity="ml@example.com")


def _keys() -> tuple[HPKERecipientKey, dict[str, KeyHandle[hpke.MLKEM768X25519PrivateKey]]]:
    kem, xk = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    public = HPKERecipientKey.from_hpke_parts(kem.public_key(), xk.public_key())
    handle = KeyHandle(
        purpose="unseal", key_id=public.key_id, key=hpke.MLKEM768X25519PrivateKey(kem, xk)
    )
    return public, {public.key_id: handle}


def _rewrite_header(blob: bytes, header: bytes) -> bytes:
    (length,) = struct.unpack_from(">I", blob, len(MAGIC))
    rest = blob[len(MAGIC) + 4 + length :]
    return MAGIC + struct.pack(">I", len(header)) + header + rest


def test_the_signature_is_carried_and_authenticated() -> None:
    public, keys = _keys()
    blob = seal(
        b"model",
        recipient=public,
        content_type=CT,
        extra_header={SIGNATURE_HEADER: SIGNATURE.to_json()},
    )
    artifact = parse_sealed(blob)
    assert ModelSignature.from_sealed_header(artifact.header) == SIGNATURE
    assert open_sealed(blob, keys=keys, limit=1 << 20, expected_content_type=CT) == b"model"
    # Claim another signer: the header is the GCM associated data, so opening fails.
    head = parse_canonical_json(artifact.header, what="header")
    head[SIGNATURE_HEADER]["identity"] = "mallory@example.com"
    forged = _rewrite_header(blob, canonical_json(head))
    with pytest.raises(DecryptionError):
        open_sealed(forged, keys=keys, limit=1 << 20, expected_content_type=CT)
    # Drop the signature: refused just the same.
    del head[SIGNATURE_HEADER]
    with pytest.raises(DecryptionError):
        open_sealed(
            _rewrite_header(blob, canonical_json(head)),
            keys=keys,
            limit=1 << 20,
            expected_content_type=CT,
        )


def test_unsigned_models_have_no_signature_member() -> None:
    public, _ = _keys()
    blob = seal(b"model", recipient=public, content_type=CT)
    assert ModelSignature.from_sealed_header(parse_sealed(blob).header) is None


@pytest.mark.parametrize("member", ["format", "content_type", "nonce", "commitment", "length"])
def test_extra_members_cannot_replace_the_format_s_own(member: str) -> None:
    public, _ = _keys()
    with pytest.raises(InputError, match="may not replace"):
        seal(b"model", recipient=public, content_type=CT, extra_header={member: "x"})


@pytest.mark.parametrize(
    "value",
    [
        "x",
        {"bundle": "!!", "file_name": "m.onnx", "identity": "a"},
        {"bundle": "eyJ4IjogMX0=", "file_name": "../m.onnx", "identity": "a"},
        {"bundle": "eyJ4IjogMX0=", "file_name": "m.onnx"},
    ],
)
def test_malformed_signature_members_are_refused(value: object) -> None:
    public, _ = _keys()
    blob = seal(b"model", recipient=public, content_type=CT, extra_header={SIGNATURE_HEADER: value})
    with pytest.raises((FormatError, InputError)):
        ModelSignature.from_sealed_header(parse_sealed(blob).header)
