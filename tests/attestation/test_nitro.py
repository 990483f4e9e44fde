"""NitroVerifier against real AWS-signed attestation documents (provenance in
``data/README_nitro_tpm.md``), and every check failing on its own mutation."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.attestation.evidence import Evidence
from qward.attestation.nitro import NitroVerifier
from qward.errors import AttestationError, QwardError

DATA = Path(__file__).parent / "data"
PRODUCTION = (DATA / "nitro_attestation.cose").read_bytes()
DEBUG = (DATA / "nitro_attestation_debug.cose").read_bytes()
# Each document's own signed timestamp: its leaf certificate lives three hours from just before it.
AT_PRODUCTION = datetime(2024, 9, 7, 14, 37, 39, 545000, tzinfo=UTC)
AT_DEBUG = datetime(2024, 9, 7, 14, 38, 6, 508000, tzinfo=UTC)
VERIFIER = NitroVerifier()


def _evidence(report: bytes) -> Evidence:
    return Evidence(format="nitro", report=report)


def _check_of(
    report: bytes, *, now: datetime = AT_PRODUCTION, verifier: NitroVerifier = VERIFIER
) -> str:
    with pytest.raises(AttestationError) as info:
        verifier.verify(_evidence(report), now=now)
    return info.value.check


def _parts(report: bytes) -> list[Any]:
    parts = cbor2.loads(report)
    assert cbor2.dumps(parts) == report  # re-encoding is faithful, so mutations change one thing
    return list(parts)


def _with_payload(report: bytes, **changes: object) -> bytes:
    parts = _parts(report)
    payload = dict(cbor2.loads(parts[2]))
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    parts[2] = cbor2.dumps(payload)
    return cbor2.dumps(parts)


def test_real_production_document_verifies_with_its_claims() -> None:
    claims = VERIFIER.verify(_evidence(PRODUCTION), now=AT_PRODUCTION)
    assert claims.format == "nitro"
    assert sorted(claims.measurements) == ["pcr0", "pcr1", "pcr2", "pcr4"]
    assert claims.measurements["pcr0"].startswith("e72a46ca80a260fb")
    assert claims.measurements["pcr4"].startswith("45706d7b621e4620")
    assert len(claims.measurements["pcr0"]) == 96  # SHA-384
    assert claims.debug is False
    assert claims.report_data == b"\x01" * 1024
    assert claims.nonce == b"\x01" * 1024
    assert claims.issued_at == AT_PRODUCTION
    assert claims.platform == {
        "module_id": "i-0a22e5c5f24d22174-enc0191cceb4289903f",
        "public_key": "01" * 1024,
    }
    assert claims.tcb == {}


def test_real_debug_document_reports_debug() -> None:
    claims = VERIFIER.verify(_evidence(DEBUG), now=AT_DEBUG)
    assert claims.debug is True
    assert list(claims.measurements) == ["pcr4"]  # PCR0..2 are zero in debug mode


def test_tagged_cose_sign1_is_accepted() -> None:
    tagged = cbor2.dumps(cbor2.CBORTag(18, _parts(PRODUCTION)))
    assert VERIFIER.verify(_evidence(tagged), now=AT_PRODUCTION).measurements


def test_other_tag_is_refused() -> None:
    assert _check_of(cbor2.dumps(cbor2.CBORTag(98, _parts(PRODUCTION)))) == "nitro-cose"


def test_today_is_outside_the_leaf_certificate_validity() -> None:
    assert _check_of(PRODUCTION, now=datetime.now(UTC)) == "nitro-certificate-validity"


def test_before_the_leaf_was_issued_is_outside_validity() -> None:
    before = AT_PRODUCTION - timedelta(minutes=10)
    assert _check_of(PRODUCTION, now=before) == "nitro-certificate-validity"


def test_one_flipped_payload_bit_breaks_the_signature() -> None:
    parts = _parts(PRODUCTION)
    payload = bytearray(parts[2])
    payload[-1] ^= 0x01  # the last byte of the nonce: still well-formed CBOR
    parts[2] = bytes(payload)
    assert _check_of(cbor2.dumps(parts)) == "nitro-signature"


def test_one_flipped_signature_bit_breaks_the_signature() -> None:
    parts = _parts(PRODUCTION)
    signature = bytearray(parts[3])
    signature[10] ^= 0x80
    parts[3] = bytes(signature)
    assert _check_of(cbor2.dumps(parts)) == "nitro-signature"


def test_wrong_root_is_refused() -> None:
    google_root = x509.load_der_x509_certificate((DATA / "gce_tpm_ek_root_1.der").read_bytes())
    assert _check_of(PRODUCTION, verifier=NitroVerifier(roots=(google_root,))) == "nitro-root"


def test_a_root_with_the_same_name_but_another_key_is_refused() -> None:
    """Pinning compares DER: a look-alike root carrying AWS's subject is not the root."""
    aws_root = x509.load_der_x509_certificate(_payload(PRODUCTION)["cabundle"][0])
    key = ec.generate_private_key(ec.SECP384R1())
    lookalike = (
        x509.CertificateBuilder()
        .subject_name(aws_root.subject)
        .issuer_name(aws_root.subject)
        .public_key(key.public_key())
        .serial_number(aws_root.serial_number)
        .not_valid_before(aws_root.not_valid_before_utc)
        .not_valid_after(aws_root.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    assert _check_of(PRODUCTION, verifier=NitroVerifier(roots=(lookalike,))) == "nitro-root"


def _payload(report: bytes) -> dict[str, Any]:
    return dict(cbor2.loads(_parts(report)[2]))


def test_a_missing_intermediate_breaks_the_chain() -> None:
    bundle = list(_payload(PRODUCTION)["cabundle"])
    del bundle[2]
    assert _check_of(_with_payload(PRODUCTION, cabundle=bundle)) == "nitro-chain"


def test_another_documents_certificate_does_not_sign_this_one() -> None:
    other_leaf = _payload(DEBUG)["certificate"]
    report = _with_payload(PRODUCTION, certificate=other_leaf)
    assert _check_of(report, now=AT_DEBUG) == "nitro-signature"


def test_algorithm_other_than_es384_is_refused() -> None:
    parts = _parts(PRODUCTION)
    parts[0] = cbor2.dumps({1: -7})
    assert _check_of(cbor2.dumps(parts)) == "nitro-algorithm"


@pytest.mark.parametrize(
    "changes",
    [
        {"digest": "SHA256"},
        {"module_id": ""},
        {"timestamp": 0},
        {"pcrs": {}},
        {"pcrs": {0: b"\x00" * 47}},
        {"pcrs": {32: b"\x00" * 48}},
        {"user_data": b"\x00" * 1025},
        {"nonce": None, "extra": b""},
        {"cabundle": []},
        {"certificate": None},
        {"public_key": b""},
    ],
)
def test_payload_rules(changes: dict[str, object]) -> None:
    assert _check_of(_with_payload(PRODUCTION, **changes)) == "nitro-payload"


def test_not_an_array_and_wrong_shapes() -> None:
    assert _check_of(b"") == "nitro-cose"
    assert _check_of(cbor2.dumps({"a": 1})) == "nitro-cose"
    assert _check_of(cbor2.dumps(_parts(PRODUCTION)[:3])) == "nitro-cose"
    assert _check_of(PRODUCTION[:-1]) == "nitro-cose"


def test_naive_now_is_refused() -> None:
    with pytest.raises(QwardError):
        VERIFIER.verify(_evidence(PRODUCTION), now=AT_PRODUCTION.replace(tzinfo=None))


@settings(max_examples=150, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(PRODUCTION) - 1),
    value=st.integers(min_value=0, max_value=255),
    cut=st.integers(min_value=0, max_value=len(PRODUCTION)),
)
def test_mutated_documents_fail_only_with_qward_errors(position: int, value: int, cut: int) -> None:
    mutated = bytearray(PRODUCTION)
    mutated[position] = value
    for report in (bytes(mutated), PRODUCTION[:cut]):
        with contextlib.suppress(QwardError):
            VERIFIER.verify(_evidence(report), now=AT_PRODUCTION)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=512))
def test_garbage_fails_only_with_qward_errors(data: bytes) -> None:
    with pytest.raises(QwardError):
        VERIFIER.verify(_evidence(data), now=AT_PRODUCTION)


def test_trailing_bytes_and_duplicate_keys_are_refused() -> None:
    assert _check_of(PRODUCTION + b"\x00") == "nitro-cose"
    parts = _parts(PRODUCTION)
    # A map with "digest" twice: {"digest": "SHA384", "digest": "SHA384"} spliced by hand.
    duplicate = b"\xa2" + cbor2.dumps("digest") + cbor2.dumps("SHA384")
    duplicate += cbor2.dumps("digest") + cbor2.dumps("SHA384")
    parts[2] = duplicate
    assert _check_of(cbor2.dumps(parts)) == "nitro-payload"


def test_regression_a_leaf_with_an_invalid_x509_version_is_a_chain_error() -> None:
    """Found by the mutation test in a fresh clone: version byte 2 (v3) changed to 1 (v2) made
    pyca raise ``InvalidVersion``, which is not a ``ValueError``, straight out of the verifier."""
    leaf = bytearray(_payload(PRODUCTION)["certificate"])
    version = leaf.index(bytes.fromhex("a003020102"))
    leaf[version + 4] = 1
    report = _with_payload(PRODUCTION, certificate=bytes(leaf))
    assert _check_of(report) == "nitro-chain"
