"""Intel TDX: a DCAP quote version 4, its attestation-key signature and the PCK chain.

Steps follow Intel's *TDX DCAP Quoting Library API* specification, appendix "Quote Format"
(header, TD Quote Body for TDX 1.0, Quote Signature Data, QE Certification Data types 5 and 6)
and Intel's *SGX PCK Certificate and CRL Profile* for the chain:

1. the quote has a 48-byte header, a 584-byte TD report body, then a 4-byte length and exactly
   that much signature data; only zero padding may follow;
2. header Version is 4, Attestation Key Type 2 (ECDSA-256-with-P-256), TEE Type 0x81 (TDX);
3. the signature data is: ECDSA quote signature (r||s), attestation key (x||y), certification
   data of type 6 holding the QE report, its signature, the QE authentication data and nested
   certification data of type 5, the PCK certificate chain in PEM;
4. the PCK chain runs PCK → Intel SGX PCK Platform/Processor CA → a pinned Intel SGX Root CA
   (byte-equal when the chain carries the root), each link ECDSA P-256 SHA-256, and the leaf
   carries the SGX extensions (so no other key Intel's root certifies can pose as a PCK);
5. ``now`` lies inside every validity window of the chain;
6. the PCK key signed the 384-byte QE report;
7. the QE report's REPORT_DATA is SHA-256(attestation key || QE authentication data) followed
   by 32 zero bytes: the Quoting Enclave vouches for this attestation key;
8. the attestation key signed header || TD report body.

Not done, and what that means: no collateral is fetched or appraised. Intel's TCB info (for the
FMSPC) and QE identity are signed documents from Intel's PCS, and the CRLs revoke PCK and CA
certificates; without them this verifier proves only that a genuine Intel platform's Quoting
Enclave signed the TD's measurements. It does not say whether that platform's TCB (the PCK's SGX
SVNs, the PCE SVN, TEE_TCB_SVN) is up to date or out of date, whether the QE's MRSIGNER,
ISVPRODID and ISVSVN match Intel's QE identity, or whether a certificate was revoked. The values
such an appraisal needs (``tee_tcb_svn.N``, ``qe_svn``, ``pce_svn``, ``fmspc``, the QE's
``mrsigner``) are returned in the claims for a later appraisal step.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from qward.attestation import _certs, _der
from qward.attestation.evidence import Claims, Evidence
from qward.errors import AttestationError

__all__ = ["HEADER_SIZE", "PINNED_ROOT_FILES", "TD_REPORT_BODY_SIZE", "TDXVerifier"]

HEADER_SIZE = 48
TD_REPORT_BODY_SIZE = 584
PINNED_ROOT_FILES = ("intel-sgx-root-ca.pem",)
_SIGNED_SIZE = HEADER_SIZE + TD_REPORT_BODY_SIZE
_QE_REPORT_SIZE = 384
_MAX_QUOTE_BYTES = 64 * 1024
_VERSION, _AK_ECDSA_P256, _TEE_TDX = 4, 2, 0x81
_CERT_QE_REPORT, _CERT_PCK_CHAIN = 6, 5
_TD_DEBUG = 1
_PCK_CA_NAMES = ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA")
_OID_SGX_EXTENSIONS = "1.2.840.113741.1.13.1"
_OID_TCB = _OID_SGX_EXTENSIONS + ".2"
_OID_PCESVN = _OID_TCB + ".17"
_OID_FMSPC = _OID_SGX_EXTENSIONS + ".4"
# TD report body fields (TDX 1.0 TD Quote Body): name → (offset in the body, size).
_BODY = {
    "tee_tcb_svn": (0, 16),
    "mrseam": (16, 48),
    "mrsignerseam": (64, 48),
    "seam_attributes": (112, 8),
    "td_attributes": (120, 8),
    "xfam": (128, 8),
    "mrtd": (136, 48),
    "mrconfigid": (184, 48),
    "mrowner": (232, 48),
    "mrownerconfig": (280, 48),
    "rtmr0": (328, 48),
    "rtmr1": (376, 48),
    "rtmr2": (424, 48),
    "rtmr3": (472, 48),
    "report_data": (520, 64),
}


class _Reader:
    """Reads a byte string front to back; running out is a ``quote-format`` failure."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def take(self, size: int, what: str) -> bytes:
        if self._pos + size > len(self._data):
            raise AttestationError(f"quote is truncated in {what}", check="quote-format")
        self._pos += size
        return self._data[self._pos - size : self._pos]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    def end(self, what: str) -> None:
        if self._pos != len(self._data):
            raise AttestationError(f"unexpected bytes after {what}", check="quote-format")

    def end_or_zero_padding(self, what: str) -> None:
        # Quote buffers (configfs-tsm, the QGS) come zero-filled to a fixed size; anything
        # else after the quote is data nothing signed, refused rather than carried along.
        if any(self._data[self._pos :]):
            raise AttestationError(f"non-zero bytes after {what}", check="quote-format")


@dataclass(frozen=True)
class _Quote:
    """A quote cut into the parts the checks read (step 1 and 3)."""

    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes

    @classmethod
    def parse(cls, quote: bytes) -> _Quote:
        if len(quote) > _MAX_QUOTE_BYTES:
            raise AttestationError("quote is over the size limit", check="quote-format")
        outer = _Reader(quote)
        signed = outer.take(_SIGNED_SIZE, "header and TD report body")
        _check_header(signed)  # step 2, before reading a layout the header may not promise
        signature_data = outer.take(outer.u32("signature data length"), "signature data")
        outer.end_or_zero_padding("the signature data")
        sig = _Reader(signature_data)
        signature = sig.take(64, "quote signature")
        attestation_key = sig.take(64, "attestation key")
        qe_data = _certification_data(sig, _CERT_QE_REPORT, "QE report certification data")
        sig.end("the QE report certification data")
        qe = _Reader(qe_data)
        qe_report = qe.take(_QE_REPORT_SIZE, "QE report")
        qe_report_signature = qe.take(64, "QE report signature")
        qe_auth_data = qe.take(qe.u16("QE authentication data size"), "QE authentication data")
        pck_chain = _certification_data(qe, _CERT_PCK_CHAIN, "PCK certificate chain")
        qe.end("the PCK certificate chain")
        return cls(
            signed,
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain,
        )

    def body(self, name: str) -> bytes:
        offset, size = _BODY[name]
        return self.signed[HEADER_SIZE + offset : HEADER_SIZE + offset + size]


def _certification_data(reader: _Reader, expected: int, what: str) -> bytes:
    kind = reader.u16(f"{what} type")
    data = reader.take(reader.u32(f"{what} size"), what)
    if kind != expected:
        raise AttestationError(
            f"{what} has type {kind}, expected {expected}", check="certification-data"
        )
    return data


def _check_header(signed: bytes) -> None:
    version, key_type, tee_type = struct.unpack_from("<HHI", signed, 0)
    if version != _VERSION:
        raise AttestationError(f"quote version {version} is not 4", check="quote-version")
    if key_type != _AK_ECDSA_P256:
        raise AttestationError(
            f"attestation key type {key_type} is not 2 (ECDSA-256-with-P-256)",
            check="attestation-key-type",
        )
    if tee_type != _TEE_TDX:
        raise AttestationError(f"TEE type {tee_type:#x} is not 0x81 (TDX)", check="tee-type")


def _raw_ecdsa_verify(key: ec.EllipticCurvePublicKey, raw: bytes, data: bytes) -> bool:
    """Verify a 64-byte big-endian r||s ECDSA P-256 SHA-256 signature."""
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


class TDXVerifier:
    """Verifies TDX evidence: ``report`` the DCAP quote v4 (the PCK chain travels inside it,
    so ``certificates`` stays empty). ``roots`` are the trusted Intel SGX Root CAs."""

    format = "tdx"

    def __init__(self, *, roots: Sequence[x509.Certificate] | None = None) -> None:
        self._roots = _certs.pinned_roots(*PINNED_ROOT_FILES) if roots is None else tuple(roots)

    def verify(self, evidence: Evidence, *, now: datetime) -> Claims:
        """The claims a genuine TDX quote makes, or ``AttestationError``."""
        _certs.require_aware(now)
        if evidence.format != self.format:
            raise AttestationError(f"evidence is {evidence.format!r}", check="evidence-format")
        quote = _Quote.parse(evidence.report)  # steps 1-3
        pck = self._check_chain(quote.pck_chain_pem, now)  # steps 4-5
        pck_key = pck.public_key()
        if not isinstance(pck_key, ec.EllipticCurvePublicKey) or not _raw_ecdsa_verify(
            pck_key, quote.qe_report_signature, quote.qe_report
        ):  # step 6
            raise AttestationError(
                "the PCK did not sign the QE report", check="qe-report-signature"
            )
        _check_qe_binding(quote)  # step 7
        _check_quote_signature(quote)  # step 8
        return _claims(quote, pck)

    def _check_chain(self, pem: bytes, now: datetime) -> x509.Certificate:
        chain = _certs.load_pem_chain(pem, what="PCK certificate chain")
        if len(chain) not in (2, 3):
            raise AttestationError(
                f"expected PCK, intermediate[, root], got {len(chain)} certificates",
                check="certificate-format",
            )
        pck, intermediate = chain[0], chain[1]
        root = next((r for r in self._roots if r.subject == intermediate.issuer), None)
        if root is None:
            raise AttestationError("the chain does not lead to a trusted root", check="root")
        if len(chain) == 3 and chain[2].public_bytes(Encoding.DER) != root.public_bytes(
            Encoding.DER
        ):
            raise AttestationError("the chain's root is not the pinned root", check="root")
        _certs.check_ecdsa_p256_link(root, root, what="root CA", check="root-signature")
        _certs.check_ecdsa_p256_link(
            intermediate, root, what="PCK intermediate CA", check="intermediate-signature"
        )
        _certs.check_ecdsa_p256_link(pck, intermediate, what="PCK", check="pck-signature")
        _check_roles(pck, intermediate)
        for cert, what in ((root, "root CA"), (intermediate, "intermediate CA"), (pck, "PCK")):
            _certs.check_validity(cert, now, what=what)
        return pck


def _check_roles(pck: x509.Certificate, intermediate: x509.Certificate) -> None:
    """The chain is a PCK chain: Intel's root also issues other keys (the TCB signing key), and
    only a PCK, issued by a PCK CA and carrying the SGX extensions, may sign a QE report."""
    names = [a.value for a in intermediate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(names) != 1 or names[0] not in _PCK_CA_NAMES:
        raise AttestationError(
            "the intermediate is not an Intel SGX PCK CA", check="certificate-role"
        )
    _certs.extension_bytes(pck, _OID_SGX_EXTENSIONS, check="certificate-role")


def _check_qe_binding(quote: _Quote) -> None:
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report[320:384] != expected:
        raise AttestationError(
            "the QE report does not vouch for this attestation key", check="qe-report-data"
        )


def _check_quote_signature(quote: _Quote) -> None:
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key
        )
    except ValueError:
        raise AttestationError(
            "the attestation key is not a P-256 point", check="quote-signature"
        ) from None
    if not _raw_ecdsa_verify(key, quote.signature, quote.signed):
        raise AttestationError(
            "the quote signature does not verify under the attestation key",
            check="quote-signature",
        )


def _sgx_extensions(pck: x509.Certificate) -> dict[str, bytes]:
    """The PCK's SGX extension entries by OID, descending into the TCB entry."""
    check = "pck-extensions"
    raw = _certs.extension_bytes(pck, _OID_SGX_EXTENSIONS, check=check)
    out: dict[str, bytes] = {}
    for tag, entry in _der.elements(_der.single(raw, _der.TAG_SEQUENCE, check=check), check=check):
        parts = _der.elements(entry, check=check)
        if tag != _der.TAG_SEQUENCE or len(parts) != 2 or parts[0][0] != _der.TAG_OID:
            raise AttestationError("an SGX extension entry is malformed", check=check)
        oid = _der.oid_string(parts[0][1], check=check)
        out[oid] = parts[1][1]
        if oid == _OID_TCB:
            for _, component in _der.elements(parts[1][1], check=check):
                inner = _der.elements(component, check=check)
                if len(inner) == 2 and inner[0][0] == _der.TAG_OID:
                    out[_der.oid_string(inner[0][1], check=check)] = inner[1][1]
    return out


def _claims(quote: _Quote, pck: x509.Certificate) -> Claims:
    sgx = _sgx_extensions(pck)
    svns = quote.body("tee_tcb_svn")
    tcb = {f"tee_tcb_svn.{i}": svns[i] for i in range(16)}
    tcb["qe_svn"] = int.from_bytes(quote.qe_report[258:260], "little")
    if _OID_PCESVN in sgx:
        tcb["pce_svn"] = _der.unsigned_integer(sgx[_OID_PCESVN], check="pck-extensions")
    names = ("mrsignerseam", "seam_attributes", "td_attributes", "xfam")
    platform = {n: quote.body(n).hex() for n in (*names, "mrconfigid", "mrowner", "mrownerconfig")}
    platform.update(
        qe_vendor_id=quote.signed[12:28].hex(),
        qe_mrenclave=quote.qe_report[64:96].hex(),
        qe_mrsigner=quote.qe_report[128:160].hex(),
        pck_issuer=pck.issuer.rfc4514_string(),
    )
    if _OID_FMSPC in sgx:
        platform["fmspc"] = sgx[_OID_FMSPC].hex()
    measured = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam")
    return Claims(
        format="tdx",
        measurements={n: quote.body(n).hex() for n in measured},
        report_data=quote.body("report_data"),
        debug=bool(int.from_bytes(quote.body("td_attributes"), "little") & _TD_DEBUG),
        tcb=tcb,
        platform=platform,
    )
