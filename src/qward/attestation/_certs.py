"""Certificate-chain steps shared by the vendor verifiers, on pyca/cryptography.

Each step raises ``AttestationError`` naming its check; nothing here decides which chain a
format needs, only how one link, one validity window or one pinned root is checked.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import SignatureAlgorithmOID

from qward.errors import AttestationError, InputError

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "X509_PARSE_ERRORS",
    "check_ecdsa_p256_link",
    "check_rsa_pss_sha384_link",
    "check_validity",
    "extension_bytes",
    "load_der",
    "load_pem_chain",
    "pinned_roots",
    "require_aware",
    "serial_number_warning_ignored",
]

MAX_CERTIFICATE_BYTES = 16 * 1024
#: What pyca/cryptography raises for a certificate it cannot parse (``InvalidVersion`` is not a
#: ``ValueError``: hypothesis found a Nitro leaf whose version byte made it escape).
X509_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    UnsupportedAlgorithm,
)
_MAX_ROOT_FILE_BYTES = 64 * 1024


def require_aware(now: datetime) -> None:
    """Refuse a naive ``now``: a validity window compared with local time is a silent bug."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise InputError("attestation: 'now' must be a timezone-aware datetime")


def _load(data: bytes, *, pem: bool, what: str) -> list[x509.Certificate]:
    if len(data) > MAX_CERTIFICATE_BYTES * 4:
        raise AttestationError(f"{what} is over the size limit", check="certificate-format")
    with serial_number_warning_ignored():
        try:
            certs = (
                x509.load_pem_x509_certificates(data)
                if pem
                else [x509.load_der_x509_certificate(data)]
            )
            for cert in certs:
                _parse_fields(cert)
        except X509_PARSE_ERRORS as exc:
            raise AttestationError(
                f"{what} does not parse as X.509: {exc}", check="certificate-format"
            ) from None
    return certs


@contextmanager
def serial_number_warning_ignored() -> Iterator[None]:
    """Parse certificates without cryptography's warning about a serial number that is not
    positive: AMD's KDS issues VCEKs with serial 0 (RFC 5280 forbids it), a mutated certificate
    may carry any serial, and no check here reads serials."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Parsed a serial number", category=CryptographyDeprecationWarning
        )
        yield


def _parse_fields(cert: x509.Certificate) -> None:
    """Decode, now, every field a check reads, since cryptography decodes lazily and a
    malformed field would otherwise raise ``ValueError`` in the middle of a check."""
    _ = (cert.subject, cert.issuer, cert.extensions, cert.signature_algorithm_oid)
    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.tbs_certificate_bytes)
    cert.public_key()


def load_der(data: bytes, *, what: str) -> x509.Certificate:
    """One DER certificate, through a size limit."""
    if not data or len(data) > MAX_CERTIFICATE_BYTES:
        raise AttestationError(f"{what} is empty or too large", check="certificate-format")
    return _load(data, pem=False, what=what)[0]


def load_pem_chain(data: bytes, *, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order."""
    return _load(data, pem=True, what=what)


def pinned_roots(*names: str) -> tuple[x509.Certificate, ...]:
    """The root certificates shipped in ``qward/attestation/roots/`` (see its README)."""
    folder = resources.files("qward.attestation").joinpath("roots")
    out: list[x509.Certificate] = []
    for name in names:
        data = folder.joinpath(name).read_bytes()
        if len(data) > _MAX_ROOT_FILE_BYTES:
            raise AttestationError(f"pinned root {name} is too large", check="root")
        out.extend(_load(data, pem=True, what=f"pinned root {name}"))
    return tuple(out)


def check_validity(cert: x509.Certificate, now: datetime, *, what: str) -> None:
    """``now`` lies inside ``cert``'s validity window."""
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationError(
            f"{what} is valid from {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
            check="certificate-validity",
        )


def _check_names(cert: x509.Certificate, issuer: x509.Certificate, what: str, check: str) -> None:
    if cert.issuer != issuer.subject:
        raise AttestationError(
            f"{what} names issuer {cert.issuer.rfc4514_string()!r}, "
            f"not {issuer.subject.rfc4514_string()!r}",
            check=check,
        )


def check_rsa_pss_sha384_link(
    cert: x509.Certificate, issuer: x509.Certificate, *, what: str, check: str
) -> None:
    """``issuer`` signed ``cert`` with RSASSA-PSS, SHA-384, MGF1-SHA-384, 48-byte salt (AMD)."""
    _check_names(cert, issuer, what, check)
    key = issuer.public_key()
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        key, rsa.RSAPublicKey
    ):
        raise AttestationError(f"{what} is not signed with RSASSA-PSS", check=check)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, pss, hashes.SHA384())
    except InvalidSignature:
        raise AttestationError(f"{what}'s signature does not verify", check=check) from None


def check_ecdsa_p256_link(
    cert: x509.Certificate, issuer: x509.Certificate, *, what: str, check: str
) -> None:
    """``issuer`` (a P-256 key) signed ``cert`` with ECDSA and SHA-256 (Intel's PKI)."""
    _check_names(cert, issuer, what, check)
    key = issuer.public_key()
    if (
        cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256
        or not isinstance(key, ec.EllipticCurvePublicKey)
        or not isinstance(key.curve, ec.SECP256R1)
    ):
        raise AttestationError(f"{what} is not signed with ECDSA P-256 SHA-256", check=check)
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationError(f"{what}'s signature does not verify", check=check) from None


def extension_bytes(cert: x509.Certificate, oid: str, *, check: str) -> bytes:
    """The raw DER value of the extension ``oid`` that cryptography does not decode."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        raise AttestationError(f"certificate lacks extension {oid}", check=check) from None
    except ValueError as exc:  # a duplicate or malformed extension
        raise AttestationError(
            f"certificate extensions are malformed: {exc}", check=check
        ) from None
    if not isinstance(ext.value, x509.UnrecognizedExtension):
        raise AttestationError(f"extension {oid} has an unexpected type", check=check)
    return ext.value.value
