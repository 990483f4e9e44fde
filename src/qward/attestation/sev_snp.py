"""AMD SEV-SNP: the ATTESTATION_REPORT, its VCEK signature and the VCEK → ASK → ARK chain.

Steps follow AMD's *SEV Secure Nested Paging Firmware ABI Specification* (publication 56860),
Table "ATTESTATION_REPORT Structure" and its TCB_VERSION and GUEST_POLICY tables, and AMD's
*Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification*
(publication 57230) for the chain and the VCEK's TCB extensions:

1. the report is exactly 1184 bytes;
2. VERSION is one this parser knows (2 to 5: the signed layout is the same in all of them);
3. SIGNATURE_ALGO is 1, ECDSA P-384 with SHA-384;
4. SIGNING_KEY (bits 4:2 of offset 0x48) is 0, the VCEK (a VLEK-signed report is refused);
5. the certificates are VCEK, ASK and optionally the ARK, leaf first; the VCEK's product name,
   its issuer, the ASK and the ARK all name one product line, Milan or Genoa
   (``wrong-generation`` otherwise);
6. the ARK is the root pinned for that product (byte-equal when the evidence carries one);
7. the ARK signed itself, the ASK and the ASK signed the VCEK, each RSASSA-PSS SHA-384;
8. ``now`` lies inside all three validity windows;
9. the VCEK's ECDSA P-384 key signed report bytes 0x0-0x29F; R and S are 72-byte
   little-endian fields at 0x2A0 and 0x2E8;
10. a version 3+ report's CPUID family and model name the same product line as the VCEK;
11. the VCEK's blSPL, teeSPL, snpSPL and ucodeSPL extensions equal REPORTED_TCB and its hwID
    equals CHIP_ID: the key that signed is the one AMD certified for this chip at this TCB.

What this does not do: check revocation (AMD's CRL at the KDS), judge whether the TCB is
current, or decide anything about the measurement or the debug policy bit; those are
collateral and appraisal, not signature verification. Turin (whose TCB_VERSION is laid out
differently) and VLEK-signed reports are refused rather than guessed at.
"""

from __future__ import annotations

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

__all__ = ["PINNED_ROOT_FILES", "REPORT_SIZE", "SIGNED_SIZE", "SEVSNPVerifier"]

REPORT_SIZE = 1184
SIGNED_SIZE = 0x2A0
PINNED_ROOT_FILES = ("amd-ark-milan.pem", "amd-ark-genoa.pem")
_VERSIONS = range(2, 6)
_ALGO_ECDSA_P384_SHA384 = 1
_POLICY_DEBUG = 1 << 19
_PRODUCTS = ("Milan", "Genoa")
_OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
_OID_HWID = "1.3.6.1.4.1.3704.1.4"
# VCEK extension → byte of the Milan/Genoa TCB_VERSION it certifies (ABI spec, TCB_VERSION).
_DER = Encoding.DER
_TCB_FIELDS = (
    ("bootloader", "1.3.6.1.4.1.3704.1.3.1", 0),
    ("tee", "1.3.6.1.4.1.3704.1.3.2", 1),
    ("snp", "1.3.6.1.4.1.3704.1.3.3", 6),
    ("microcode", "1.3.6.1.4.1.3704.1.3.8", 7),
)


@dataclass(frozen=True)
class _Report:
    """The ATTESTATION_REPORT fields the checks and the claims read."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signature_algo: int
    flags: int

    @classmethod
    def parse(cls, raw: bytes) -> _Report:
        if len(raw) != REPORT_SIZE:
            raise AttestationError(
                f"an ATTESTATION_REPORT is {REPORT_SIZE} bytes, got {len(raw)}",
                check="report-format",
            )
        version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
        vmpl, algo = struct.unpack_from("<II", raw, 0x30)
        (flags,) = struct.unpack_from("<I", raw, 0x48)
        return cls(raw, version, guest_svn, policy, vmpl, algo, flags)

    def field(self, offset: int, size: int) -> bytes:
        return self.raw[offset : offset + size]

    @property
    def reported_tcb(self) -> bytes:
        return self.field(0x180, 8)

    @property
    def chip_id(self) -> bytes:
        return self.field(0x1A0, 64)


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if len(values) == 1 else ""


def _root_products(roots: Sequence[x509.Certificate]) -> dict[str, x509.Certificate]:
    """Each root under the product its subject names (``ARK-Milan`` → ``Milan``)."""
    out: dict[str, x509.Certificate] = {}
    for root in roots:
        prefix, _, product = _common_name(root.subject).partition("-")
        if prefix == "ARK" and product in _PRODUCTS:
            out[product] = root
    return out


class SEVSNPVerifier:
    """Verifies SEV-SNP evidence: ``report`` the ATTESTATION_REPORT, ``certificates``
    (VCEK, ASK[, ARK]) as DER. ``roots`` are the trusted ARKs, by default the pinned ones."""

    format = "sev-snp"

    def __init__(self, *, roots: Sequence[x509.Certificate] | None = None) -> None:
        chosen = _certs.pinned_roots(*PINNED_ROOT_FILES) if roots is None else tuple(roots)
        self._roots = _root_products(chosen)

    def verify(self, evidence: Evidence, *, now: datetime) -> Claims:
        """The claims a genuine VCEK-signed report makes, or ``AttestationError``."""
        _certs.require_aware(now)
        if evidence.format != self.format:
            raise AttestationError(f"evidence is {evidence.format!r}", check="evidence-format")
        report = _Report.parse(evidence.report)  # step 1
        _check_header(report)  # steps 2-4
        vcek, product = self._check_chain(evidence.certificates, now)  # steps 5-8
        _check_report_signature(report, vcek)  # step 9
        _check_generation(report, product)  # step 10
        _check_tcb(report, vcek)  # step 11
        return _claims(report, product)

    def _check_chain(
        self, certificates: tuple[bytes, ...], now: datetime
    ) -> tuple[x509.Certificate, str]:
        if len(certificates) not in (2, 3):
            raise AttestationError(
                f"expected VCEK, ASK[, ARK] certificates, got {len(certificates)}",
                check="certificate-format",
            )
        vcek = _certs.load_der(certificates[0], what="VCEK")
        ask = _certs.load_der(certificates[1], what="ASK")
        ark = _certs.load_der(certificates[2], what="ARK") if len(certificates) == 3 else None
        product = _vcek_product(vcek)
        _check_same_product(product, vcek, ask, ark)  # step 5
        root = self._roots.get(product)  # step 6
        if root is None:
            raise AttestationError(f"no ARK is trusted for {product}", check="root")
        if ark is not None and ark.public_bytes(_DER) != root.public_bytes(_DER):
            raise AttestationError(f"the ARK is not the pinned ARK-{product}", check="root")
        _certs.check_rsa_pss_sha384_link(root, root, what="ARK", check="ark-signature")  # step 7
        _certs.check_rsa_pss_sha384_link(ask, root, what="ASK", check="ask-signature")
        _certs.check_rsa_pss_sha384_link(vcek, ask, what="VCEK", check="vcek-signature")
        for cert, what in ((root, "ARK"), (ask, "ASK"), (vcek, "VCEK")):  # step 8
            _certs.check_validity(cert, now, what=what)
        return vcek, product


def _check_header(report: _Report) -> None:
    if report.version not in _VERSIONS:
        raise AttestationError(
            f"report VERSION {report.version} is not one of 2-5", check="report-version"
        )
    if report.signature_algo != _ALGO_ECDSA_P384_SHA384:
        raise AttestationError(
            f"SIGNATURE_ALGO {report.signature_algo} is not 1 (ECDSA P-384 SHA-384)",
            check="signature-algorithm",
        )
    if (report.flags >> 2) & 0b111 != 0:
        raise AttestationError(
            "the report is not signed by a VCEK (SIGNING_KEY is not 0)", check="signing-key"
        )


def _vcek_product(vcek: x509.Certificate) -> str:
    if _common_name(vcek.subject) != "SEV-VCEK":
        raise AttestationError("the leaf certificate is not a VCEK", check="certificate-role")
    raw = _certs.extension_bytes(vcek, _OID_PRODUCT_NAME, check="product")
    name = _der.single(raw, _der.TAG_IA5STRING, check="product").decode("ascii", "replace")
    product = name.partition("-")[0]  # "Milan-B0" names the stepping too
    if product not in _PRODUCTS:
        raise AttestationError(f"VCEK product {name!r} is not Milan or Genoa", check="product")
    return product


def _check_same_product(
    product: str, vcek: x509.Certificate, ask: x509.Certificate, ark: x509.Certificate | None
) -> None:
    names = [("VCEK issuer", _common_name(vcek.issuer), f"SEV-{product}")]
    names.append(("ASK", _common_name(ask.subject), f"SEV-{product}"))
    if ark is not None:
        names.append(("ARK", _common_name(ark.subject), f"ARK-{product}"))
    for what, found, expected in names:
        if found != expected:
            raise AttestationError(
                f"the VCEK is a {product} key but the {what} is {found!r}",
                check="wrong-generation",
            )


def _check_report_signature(report: _Report, vcek: x509.Certificate) -> None:
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError("the VCEK key is not ECDSA P-384", check="report-signature")
    r = int.from_bytes(report.field(0x2A0, 72), "little")
    s = int.from_bytes(report.field(0x2E8, 72), "little")
    try:
        key.verify(encode_dss_signature(r, s), report.raw[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise AttestationError(
            "the report signature does not verify under the VCEK", check="report-signature"
        ) from None


def _cpuid_product(family: int, model: int) -> str | None:
    """The product line of a Zen 3/Zen 4 part by CPUID family and model (Genoa-class parts,
    Bergamo and Siena included, use Genoa VCEKs)."""
    if family != 0x19:
        return None
    return {0x0: "Milan", 0x1: "Genoa", 0xA: "Genoa"}.get(model >> 4)


def _check_generation(report: _Report, product: str) -> None:
    if report.version < 3:
        return  # version 2 reports have no CPUID fields (reserved, zero)
    family, model = report.raw[0x188], report.raw[0x189]
    found = _cpuid_product(family, model)
    if found != product:
        raise AttestationError(
            f"the report's CPUID family {family:#x} model {model:#x} is not a {product} part",
            check="wrong-generation",
        )


def _check_tcb(report: _Report, vcek: x509.Certificate) -> None:
    for name, oid, index in _TCB_FIELDS:
        raw = _certs.extension_bytes(vcek, oid, check="vcek-tcb")
        certified = _der.unsigned_integer(
            _der.single(raw, _der.TAG_INTEGER, check="vcek-tcb"), check="vcek-tcb"
        )
        if certified != report.reported_tcb[index]:
            raise AttestationError(
                f"REPORTED_TCB {name} is {report.reported_tcb[index]}, the VCEK certifies "
                f"{certified}",
                check="vcek-tcb",
            )
    hwid = _certs.extension_bytes(vcek, _OID_HWID, check="chip-id")
    # The KDS encodes hwID as the bare 64 bytes; accept the OCTET STRING form too.
    if len(hwid) != 64:
        hwid = _der.single(hwid, _der.TAG_OCTET_STRING, check="chip-id")
    if hwid != report.chip_id:
        raise AttestationError(
            "CHIP_ID differs from the VCEK's hwID (or the report masks it)", check="chip-id"
        )


def _claims(report: _Report, product: str) -> Claims:
    tcb = report.reported_tcb
    hexes = {
        "family_id": (0x10, 16),
        "image_id": (0x20, 16),
        "host_data": (0xC0, 32),
        "id_key_digest": (0xE0, 48),
        "author_key_digest": (0x110, 48),
        "report_id": (0x140, 32),
        "platform_info": (0x40, 8),
        "current_tcb": (0x38, 8),
        "launch_tcb": (0x1F0, 8),
    }
    platform = {name: report.field(off, size).hex() for name, (off, size) in hexes.items()}
    platform.update(
        chip_id=report.chip_id.hex(),
        product=product,
        report_version=str(report.version),
        vmpl=str(report.vmpl),
        guest_svn=str(report.guest_svn),
        policy=f"{report.policy:016x}",
        reported_tcb=tcb.hex(),
    )
    return Claims(
        format="sev-snp",
        measurements={"measurement": report.field(0x90, 48).hex()},
        report_data=report.field(0x50, 64),
        debug=bool(report.policy & _POLICY_DEBUG),
        tcb={"bootloader": tcb[0], "tee": tcb[1], "snp": tcb[6], "microcode": tcb[7]},
        platform=platform,
    )
