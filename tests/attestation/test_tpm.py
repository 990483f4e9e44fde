"""TPMQuoteVerifier against a real Google Compute Engine vTPM quote whose AK certificate chains to
Google's published root (provenance in ``data/README_nitro_tpm.md``); then each check failing on
its own mutation, and quotes we sign ourselves for the ECDSA and RSA-PSS paths (labelled so)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.attestation.evidence import Evidence
from qward.attestation.tpm import TPMQuoteVerifier, expected_pcr_digest
from qward.attestation.tpm_eventlog import check_event_log, replay_sha256
from qward.attestation.tpm_structures import (
    TPM_ALG_ECDSA,
    TPM_ALG_RSAPSS,
    TPM_ALG_SHA256,
    TPMSAttest,
    TPMSClockInfo,
    TPMSPCRSelection,
    TPMTSignature,
    public_key_from_tpmt_public,
)
from qward.errors import AttestationError, FormatError, QwardError

DATA = Path(__file__).parent / "data"
QUOTE = (DATA / "gce_vtpm_quote_sha256.tpms_attest").read_bytes()
SIGNATURE = (DATA / "gce_vtpm_quote_sha256.tpmt_signature").read_bytes()
AK_CERT = (DATA / "gce_vtpm_ak_cert.der").read_bytes()
INTERMEDIATE = (DATA / "gce_tpm_ek_intermediate_2.der").read_bytes()
ROOT = x509.load_der_x509_certificate((DATA / "gce_tpm_ek_root_1.der").read_bytes())
PCRS = {
    k: bytes.fromhex(v)
    for k, v in json.loads((DATA / "gce_vtpm_pcrs_sha256.json").read_text()).items()
}
AK_PUBLIC = public_key_from_tpmt_public((DATA / "gce_vtpm_ak_pub.tpmt_public").read_bytes())
# The AK certificate is valid 2021-08-31 to 2051-08-24; the quote itself carries no wall time.
NOW = datetime(2026, 1, 1, tzinfo=UTC)
VERIFIER = TPMQuoteVerifier(roots=(ROOT,))


def _evidence(**changes: object) -> Evidence:
    real = Evidence(
        format="tpm",
        report=QUOTE,
        signature=SIGNATURE,
        certificates=(AK_CERT, INTERMEDIATE),
        pcrs=dict(PCRS),
    )
    return dataclasses.replace(real, **changes)  # type: ignore[arg-type]


def _check_of(
    evidence: Evidence, *, verifier: TPMQuoteVerifier = VERIFIER, now: datetime = NOW
) -> str:
    with pytest.raises(AttestationError) as info:
        verifier.verify(evidence, now=now)
    return info.value.check


def _flip(data: bytes, position: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[position] ^= mask
    return bytes(out)


def test_real_gce_quote_verifies_with_its_claims() -> None:
    claims = VERIFIER.verify(_evidence(), now=NOW)
    assert claims.format == "tpm"
    assert claims.report_data == bytes.fromhex("9009")  # the nonce the sample was taken with
    assert claims.debug is False
    assert list(claims.measurements) == [f"sha256:{i}" for i in range(24)]
    assert claims.measurements["sha256:0"] == PCRS["sha256:0"].hex()
    assert claims.tcb == {
        "firmware_version_high": 0x20160511,
        "firmware_version_low": 0x00162800,
        "reset_count": 10,
        "restart_count": 0,
    }
    assert claims.platform["safe"] == "yes"
    assert claims.platform["clock"] == "8219159552"
    assert claims.platform["qualified_signer"].startswith("000bde01fe4b")
    assert claims.nonce is None and claims.issued_at is None


def test_real_structures_round_trip() -> None:
    assert TPMSAttest.from_bytes(QUOTE).to_bytes() == QUOTE
    assert TPMTSignature.from_bytes(SIGNATURE).to_bytes() == SIGNATURE


def test_the_ak_tpmt_public_is_the_certified_key() -> None:
    certified = x509.load_der_x509_certificate(AK_CERT).public_key()
    assert isinstance(certified, rsa.RSAPublicKey) and isinstance(AK_PUBLIC, rsa.RSAPublicKey)
    assert AK_PUBLIC.public_numbers() == certified.public_numbers()


def test_pinned_ak_key_verifies_without_a_chain() -> None:
    verifier = TPMQuoteVerifier(ak_public_keys=(AK_PUBLIC,))
    assert verifier.verify(_evidence(certificates=()), now=NOW).report_data == b"\x90\x09"


def test_a_pinned_key_that_is_not_the_ak_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    verifier = TPMQuoteVerifier(ak_public_keys=(other,))
    assert _check_of(_evidence(certificates=()), verifier=verifier) == "tpm-signature"


def test_no_trust_anchor_at_all_is_refused() -> None:
    assert _check_of(_evidence(), verifier=TPMQuoteVerifier()) == "tpm-ak"


def test_one_flipped_quote_bit_breaks_the_signature() -> None:
    extra_data_byte = 4 + 2 + 2 + 34 + 2  # magic, type, TPM2B_NAME(34), extraData size
    assert _check_of(_evidence(report=_flip(QUOTE, extra_data_byte))) == "tpm-signature"


def test_one_flipped_signature_bit_breaks_the_signature() -> None:
    assert _check_of(_evidence(signature=_flip(SIGNATURE, 100))) == "tpm-signature"


def test_wrong_root_is_refused() -> None:
    aws = x509.load_pem_x509_certificate(
        Path(__file__)
        .parents[2]
        .joinpath("src/qward/attestation/roots/aws_nitro_root_g1.pem")
        .read_bytes()
    )
    assert _check_of(_evidence(), verifier=TPMQuoteVerifier(roots=(aws,))) == "tpm-ak-root"


def test_missing_intermediate_does_not_reach_the_root() -> None:
    assert _check_of(_evidence(certificates=(AK_CERT,))) == "tpm-ak-root"


def test_chain_in_the_wrong_order_is_refused() -> None:
    assert _check_of(_evidence(certificates=(INTERMEDIATE, AK_CERT))) == "tpm-ak-chain"


def test_now_outside_certificate_validity_is_refused() -> None:
    assert (
        _check_of(_evidence(), now=datetime(2052, 1, 1, tzinfo=UTC)) == "tpm-certificate-validity"
    )
    assert (
        _check_of(_evidence(), now=datetime(2021, 8, 1, tzinfo=UTC)) == "tpm-certificate-validity"
    )


def test_a_pcr_value_that_does_not_match_the_digest() -> None:
    pcrs = dict(PCRS, **{"sha256:23": _flip(PCRS["sha256:23"], 0)})
    assert _check_of(_evidence(pcrs=pcrs)) == "tpm-pcr-digest"


def test_a_missing_pcr_is_refused() -> None:
    pcrs = {k: v for k, v in PCRS.items() if k != "sha256:7"}
    assert _check_of(_evidence(pcrs=pcrs)) == "tpm-pcr-selection"


@pytest.mark.parametrize("extra", ["sha256:24", "sha1:0", "sha256:07"])
def test_an_extra_pcr_is_refused(extra: str) -> None:
    assert _check_of(_evidence(pcrs=dict(PCRS, **{extra: b"\x00" * 32}))) == "tpm-pcr-selection"


def test_a_pcr_of_the_wrong_size_is_refused() -> None:
    assert (
        _check_of(_evidence(pcrs=dict(PCRS, **{"sha256:0": b"\x00" * 20}))) == "tpm-pcr-selection"
    )


def test_magic_and_type_have_their_own_checks() -> None:
    assert _check_of(_evidence(report=_flip(QUOTE, 0))) == "tpm-magic"
    assert _check_of(_evidence(report=_flip(QUOTE, 5))) == "tpm-type"


def test_truncated_and_padded_structures_are_format_errors() -> None:
    for cut in (0, 5, 6, 40, len(QUOTE) - 1):
        assert _check_of(_evidence(report=QUOTE[:cut])) == "tpm-format"
    assert _check_of(_evidence(report=QUOTE + b"\x00")) == "tpm-format"
    assert _check_of(_evidence(signature=SIGNATURE[:-1])) == "tpm-format"
    assert _check_of(_evidence(signature=SIGNATURE + b"\x00")) == "tpm-format"
    with pytest.raises(FormatError):
        TPMSAttest.from_bytes(QUOTE[:-3])


def test_pcr_digest_is_sha256_over_selection_order() -> None:
    attest = TPMSAttest.from_bytes(QUOTE)
    ordered = b"".join(PCRS[f"sha256:{i}"] for i in range(24))
    assert (
        expected_pcr_digest(attest, PCRS) == hashlib.sha256(ordered).digest() == attest.pcr_digest
    )


# Quotes below are signed by keys made in this test, not by a TPM: they exercise the ECDSA and
# RSA-PSS paths, which the real sample (RSASSA) does not.

SELF_PCRS = {"sha256:0": b"\x11" * 32, "sha256:7": b"\x77" * 32, "sha256:16": b"\x00" * 32}


def _self_made_attest() -> TPMSAttest:
    digest = hashlib.sha256(b"".join(SELF_PCRS[f"sha256:{i}"] for i in (0, 7, 16))).digest()
    return TPMSAttest(
        qualified_signer=b"\x00\x0b" + b"\x42" * 32,
        extra_data=b"\x5a" * 32,
        clock_info=TPMSClockInfo(clock=1234, reset_count=1, restart_count=2, safe=False),
        firmware_version=7,
        pcr_selections=(TPMSPCRSelection(hash_alg=TPM_ALG_SHA256, indices=(0, 7, 16)),),
        pcr_digest=digest,
    )


def test_self_made_ecdsa_p256_quote_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    report = _self_made_attest().to_bytes()
    r, s = decode_dss_signature(key.sign(report, ec.ECDSA(SHA256())))
    signature = TPMTSignature(
        sig_alg=TPM_ALG_ECDSA,
        hash_alg=TPM_ALG_SHA256,
        r=r.to_bytes(32, "big"),
        s=s.to_bytes(32, "big"),
    ).to_bytes()
    evidence = Evidence(format="tpm", report=report, signature=signature, pcrs=SELF_PCRS)
    claims = TPMQuoteVerifier(ak_public_keys=(key.public_key(),)).verify(evidence, now=NOW)
    assert claims.report_data == b"\x5a" * 32
    assert claims.platform["safe"] == "no"
    assert claims.tcb == {
        "firmware_version_high": 0,
        "firmware_version_low": 7,
        "reset_count": 1,
        "restart_count": 2,
    }
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    verifier = TPMQuoteVerifier(ak_public_keys=(p384,))
    assert _check_of(evidence, verifier=verifier) == "tpm-signature"


def test_self_made_rsapss_quote_verifies() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    report = _self_made_attest().to_bytes()
    pss = padding.PSS(mgf=padding.MGF1(SHA256()), salt_length=32)
    signature = TPMTSignature(
        sig_alg=TPM_ALG_RSAPSS, hash_alg=TPM_ALG_SHA256, signature=key.sign(report, pss, SHA256())
    ).to_bytes()
    evidence = Evidence(format="tpm", report=report, signature=signature, pcrs=SELF_PCRS)
    verifier = TPMQuoteVerifier(ak_public_keys=(key.public_key(),))
    assert verifier.verify(evidence, now=NOW).measurements["sha256:16"] == "00" * 32
    tampered = dataclasses.replace(evidence, report=_flip(report, len(report) - 1))
    assert _check_of(tampered, verifier=verifier) == "tpm-signature"


@settings(max_examples=150, deadline=None)
@given(
    which=st.sampled_from(["report", "signature"]),
    position=st.integers(min_value=0, max_value=10_000),
    value=st.integers(min_value=0, max_value=255),
    cut=st.integers(min_value=0, max_value=400),
)
def test_mutated_quotes_fail_only_with_qward_errors(
    which: str, position: int, value: int, cut: int
) -> None:
    original = QUOTE if which == "report" else SIGNATURE
    mutated = bytearray(original)
    mutated[position % len(mutated)] = value
    for data in (bytes(mutated), original[:cut]):
        with contextlib.suppress(QwardError):
            VERIFIER.verify(_evidence(**{which: data}), now=NOW)


@settings(max_examples=150, deadline=None)
@given(report=st.binary(max_size=256), signature=st.binary(max_size=300))
def test_garbage_fails_only_with_qward_errors(report: bytes, signature: bytes) -> None:
    with pytest.raises(QwardError):
        VERIFIER.verify(_evidence(report=report, signature=signature), now=NOW)


EVENT_LOG = (DATA / "gce_vtpm_event_log.bin").read_bytes()


def test_real_event_log_replays_to_the_quoted_pcrs() -> None:
    replayed = replay_sha256(EVENT_LOG)
    assert sorted(replayed) == list(range(10))
    assert all(replayed[i] == PCRS[f"sha256:{i}"] for i in replayed)
    assert VERIFIER.verify(_evidence(event_log=EVENT_LOG), now=NOW).measurements


def test_a_tampered_event_log_is_refused() -> None:
    # The first SHA-256 digest after the Spec ID header: its algorithm id 0x000b, little-endian.
    header_end = 4 + 4 + 20 + 4 + int.from_bytes(EVENT_LOG[28:32], "little")
    first_sha256 = EVENT_LOG.index(b"\x0b\x00", header_end + 12) + 2
    assert _check_of(_evidence(event_log=_flip(EVENT_LOG, first_sha256))) == "tpm-event-log"
    assert _check_of(_evidence(event_log=EVENT_LOG[:-1])) == "tpm-event-log"
    assert _check_of(_evidence(event_log=b"\x00" * 40)) == "tpm-event-log"


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255))
def test_mutated_event_logs_fail_only_with_qward_errors(position: int, value: int) -> None:
    mutated = bytearray(EVENT_LOG)
    mutated[position % len(mutated)] = value
    with contextlib.suppress(QwardError):
        check_event_log(bytes(mutated), PCRS)
