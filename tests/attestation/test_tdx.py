"""TDXVerifier against Intel-signed TDX DCAP v4 quotes from public repositories (data/README.md).

Expected values for the SPR quote come from go-tdx-guest's own tests (validate/validate_test.go
and tools/check/check_test.go), which parse the same file independently.
"""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.attestation import sev_snp
from qward.attestation._certs import pinned_roots
from qward.attestation.evidence import Evidence
from qward.attestation.tdx import TDXVerifier
from qward.errors import AttestationError, QwardError

from .samples import NOW, read

VERIFIER = TDXVerifier()
# go-tdx-guest appended 39 bytes ("\nextra bytes(only for testing purpose)\n") to the quote;
# the quote itself ends at byte 4935.
SPR_RAW = read("tdx-go-tdx-guest-spr-quote.dat")
SPR = SPR_RAW[:4935]
COS = read("tdx-go-tdx-guest-cos113-quote.dat")
DEBUG_QUOTE = read("tdx-lunal-v4-debug-quote.dat")
# Offsets in these quotes (all carry 32 bytes of QE authentication data).
SIG, AK, CERT_TYPE, QE_REPORT, QE_SIG, AUTH, PEM = 636, 700, 764, 770, 1154, 1220, 1258


def evidence(quote: bytes) -> Evidence:
    return Evidence(format="tdx", report=quote)


def fails(
    quote: bytes, check: str, *, now: datetime = NOW, verifier: TDXVerifier = VERIFIER
) -> None:
    with pytest.raises(AttestationError) as info:
        verifier.verify(evidence(quote), now=now)
    assert info.value.check == check, str(info.value)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def with_pck_chain(quote: bytes, pem: bytes) -> bytes:
    """``quote`` with its PCK chain replaced and every enclosing length recomputed."""
    qe = quote[QE_REPORT : AUTH + 32] + struct.pack("<HI", 5, len(pem)) + pem
    signature_data = quote[SIG:CERT_TYPE] + struct.pack("<HI", 6, len(qe)) + qe
    return quote[:632] + struct.pack("<I", len(signature_data)) + signature_data


def pck_chain(quote: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(quote[PEM:].rstrip(b"\0"))


def self_made_root(name: x509.Name) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2018, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2050, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


# -- the real samples verify, and say what go-tdx-guest's tests say they say ---------------------


def test_go_tdx_guest_spr_quote() -> None:
    claims = VERIFIER.verify(evidence(SPR), now=NOW)
    assert claims.format == "tdx"
    assert claims.measurements == {
        "mrtd": "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f"
        "22fc00b8dcd404bc10d5e119d7215cbb",
        "mrseam": "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9"
        "a89b4869a9fab60fbe9d0c5a5363c656",
        "rtmr0": "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976"
        "823adf08f833c1e50b51779c6593f32a",
        "rtmr1": "2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589"
        "c4b56d035c59107c6bc5800db2cacb61",
        "rtmr2": "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe5"
        "9c7368b3c2287fc7c3bf5c924eb4424e",
        "rtmr3": "00" * 48,
    }
    assert claims.report_data == bytes.fromhex(
        "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545"
        "eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113"
    )
    assert claims.platform["td_attributes"] == "0000004000000000"
    assert claims.platform["xfam"] == "e71a060000000000"
    assert claims.platform["qe_vendor_id"] == "939a7233f79c4ca9940a0db3957f0607"
    svns = bytes.fromhex("03000400000000000000000000000000")
    assert {k: v for k, v in claims.tcb.items() if k.startswith("tee_tcb_svn.")} == {
        f"tee_tcb_svn.{i}": svns[i] for i in range(16)
    }
    # QE ISVSVN from the QE report, PCESVN and FMSPC from the PCK certificate's SGX extensions.
    assert claims.tcb["qe_svn"] == 4
    assert claims.tcb["pce_svn"] == 11
    assert claims.platform["fmspc"] == "50806f000000"
    assert claims.platform["pck_issuer"].endswith("CN=Intel SGX PCK Platform CA")
    assert claims.debug is False  # TD_ATTRIBUTES bit 0 clear (bit 30, SEPT_VE_DISABLE, set)


def test_cos_quote_with_zero_padding() -> None:
    claims = VERIFIER.verify(evidence(COS), now=NOW)  # 8000 bytes: the quote, then zeros
    assert claims.platform["fmspc"] == "00806f050000"
    assert claims.debug is False


def test_debug_td() -> None:
    claims = VERIFIER.verify(evidence(DEBUG_QUOTE), now=NOW)
    # lunal-dev's live_dcap.rs: "V4 fixture has debug bit set".
    assert claims.debug is True
    assert bytes.fromhex(claims.platform["td_attributes"])[0] & 1  # TUD.DEBUG


def test_trailing_data_is_refused() -> None:
    fails(SPR_RAW, "quote-format")  # the unmodified go-tdx-guest file, with its extra bytes


# -- signatures: each part of the quote is covered by one check --------------------------------

REGIONS = [
    (range(8, 632), "quote-signature"),  # header after the checked fields, and the TD body
    (range(SIG, AK), "quote-signature"),
    (range(AK, CERT_TYPE), "qe-report-data"),  # another key would need another QE report
    (range(QE_REPORT, QE_SIG), "qe-report-signature"),
    (range(QE_SIG, AUTH - 2), "qe-report-signature"),
    (range(AUTH, AUTH + 32), "qe-report-data"),
]


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_a_flipped_bit_is_refused_by_the_check_covering_it(data: st.DataObject) -> None:
    region, check = data.draw(st.sampled_from(REGIONS))
    byte = data.draw(st.sampled_from(region))
    fails(flip(SPR, byte * 8 + data.draw(st.integers(0, 7))), check)


@pytest.mark.parametrize(
    ("offset", "value", "check"),
    [
        (0, 3, "quote-version"),
        (0, 5, "quote-version"),
        (2, 3, "attestation-key-type"),
        (4, 0, "tee-type"),
        (CERT_TYPE, 5, "certification-data"),
        (PEM - 6, 6, "certification-data"),
    ],
)
def test_header_and_structure_fields(offset: int, value: int, check: str) -> None:
    quote = bytearray(SPR)
    quote[offset : offset + 2] = value.to_bytes(2, "little")
    fails(bytes(quote), check)


def test_a_corrupted_pck_signature_is_refused() -> None:
    pck, intermediate, root = pck_chain(SPR)
    der = bytearray(pck.public_bytes(Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value
    broken = x509.load_der_x509_certificate(bytes(der))
    fails(with_pck_chain(SPR, pem(broken, intermediate, root)), "pck-signature")


# -- roots --------------------------------------------------------------------------------------


def test_a_root_from_another_vendor_is_not_trusted() -> None:
    amd = pinned_roots(*sev_snp.PINNED_ROOT_FILES)
    fails(SPR, "root", verifier=TDXVerifier(roots=amd))


def test_a_self_made_root_with_intels_name_is_not_trusted() -> None:
    _, intermediate, _ = pck_chain(SPR)
    fake = self_made_root(intermediate.issuer)
    verifier = TDXVerifier(roots=[fake])
    fails(SPR, "root", verifier=verifier)  # the quote carries Intel's root, not this one
    without_root = with_pck_chain(SPR, pem(*pck_chain(SPR)[:2]))
    fails(without_root, "intermediate-signature", verifier=verifier)
    VERIFIER.verify(evidence(without_root), now=NOW)  # and the pinned root still accepts it


def test_a_self_made_root_in_the_quote_is_refused() -> None:
    pck, intermediate, _ = pck_chain(SPR)
    fails(with_pck_chain(SPR, pem(pck, intermediate, self_made_root(intermediate.issuer))), "root")


@pytest.mark.parametrize("count", [1, 4])
def test_chain_length(count: int) -> None:
    certs = (pck_chain(SPR) * 2)[:count]
    fails(with_pck_chain(SPR, pem(*certs)), "certificate-format")


# -- validity -----------------------------------------------------------------------------------


def test_outside_the_pck_validity_window_is_refused() -> None:
    # The PCK certificate is valid 2022-09-20T13:20:31Z .. 2029-09-20T13:20:31Z.
    fails(SPR, "certificate-validity", now=datetime(2029, 9, 20, 13, 20, 32, tzinfo=UTC))
    fails(SPR, "certificate-validity", now=datetime(2022, 9, 20, 13, 20, 30, tzinfo=UTC))
    fails(SPR, "certificate-validity", now=datetime(2050, 1, 1, tzinfo=UTC))  # the root, too


def test_still_valid_today() -> None:
    # No certificate in these quotes has expired on 2026-12-03 (earliest notAfter 2029-09-20).
    for quote in (SPR, COS, DEBUG_QUOTE):
        VERIFIER.verify(evidence(quote), now=datetime(2026, 12, 3, 12, tzinfo=UTC))


def test_other_formats_are_refused() -> None:
    with pytest.raises(AttestationError) as info:
        VERIFIER.verify(Evidence(format="sev-snp", report=SPR), now=NOW)
    assert info.value.check == "evidence-format"


# -- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 47, 48, 631, 632, 635, 636, 700, 1000, 1258, 2000, 4934])
def test_truncated_quotes(size: int) -> None:
    fails(SPR[:size], "quote-format")


def test_oversized_quote() -> None:
    fails(SPR + b"\1" * 70_000, "quote-format")


def test_lengths_pointing_past_the_end() -> None:
    quote = bytearray(SPR)
    quote[632:636] = (0xFFFFFFFF).to_bytes(4, "little")
    fails(bytes(quote), "quote-format")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=6000))
def test_random_bytes_raise_only_qward_errors(quote: bytes) -> None:
    with pytest.raises(QwardError):
        VERIFIER.verify(evidence(quote), now=NOW)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutated_quotes_raise_only_attestation_errors(data: st.DataObject) -> None:
    quote = bytearray(data.draw(st.sampled_from([SPR, COS, DEBUG_QUOTE])))
    for _ in range(data.draw(st.integers(1, 4))):
        # Bias towards the structure: lengths, types and the PEM chain.
        position = data.draw(st.integers(0, len(quote) - 1) | st.integers(628, 1300))
        quote[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        quote = quote[: data.draw(st.integers(0, len(quote)))]
    # Refusing is right; an exception of any other type fails the test.
    with contextlib.suppress(AttestationError):
        VERIFIER.verify(evidence(bytes(quote)), now=NOW + timedelta(seconds=1))


def test_only_a_pck_chain_may_sign_the_qe_report() -> None:
    # Intel's root certifies other keys too; the chain (root, root) links, but is no PCK chain.
    root = pck_chain(SPR)[2]
    fails(with_pck_chain(SPR, pem(root, root)), "certificate-role")
