"""Certificate path checks shared by the Nitro and TPM verifiers (private).

Each check raises ``AttestationError`` with a ``check`` name built from the caller's prefix
(``"nitro-"``, ``"tpm-"``), so a failure says which format and which step failed. Signatures are
checked by pyca/cryptography (``verify_directly_issued_by``); this module only orders the steps.
Names are never read: some vendor certificates carry attributes longer than X.520 allows, which
pyca reports as a warning, and the path is decided by signatures and DER equality, not names.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from qward.attestation._certs import X509_PARSE_ERRORS, serial_number_warning_ignored
from qward.errors import AttestationError, InputError

__all__ = [
    "check_ca",
    "check_issued_by",
    "check_signing_leaf",
    "check_validity",
    "der",
    "load_der",
    "load_pinned_root",
]

_MAX_ROOT_PEM_BYTES = 16 * 1024


def load_pinned_root(name: str) -> x509.Certificate:
    """The PEM certificate ``roots/<name>`` shipped with the package."""
    data = resources.files("qward.attestation").joinpath("roots", name).read_bytes()
    if len(data) > _MAX_ROOT_PEM_BYTES:
        raise InputError(f"pinned root {name} is over {_MAX_ROOT_PEM_BYTES} bytes")
    return x509.load_pem_x509_certificate(data)


def load_der(data: bytes, *, check: str, what: str) -> x509.Certificate:
    """Parse one DER certificate, or ``AttestationError(check)``."""
    try:
        with serial_number_warning_ignored():
            return x509.load_der_x509_certificate(data)
    except X509_PARSE_ERRORS:
        raise AttestationError(f"{what} is not a DER X.509 certificate", check=check) from None


def der(cert: x509.Certificate) -> bytes:
    """The DER bytes of ``cert`` (what pinning compares)."""
    return cert.public_bytes(Encoding.DER)


def check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, *, check: str) -> None:
    """``cert`` carries a valid signature by ``issuer``'s key, or ``AttestationError``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise AttestationError(
            "a certificate is not signed by the next one in its chain", check=check
        ) from None


def check_validity(chain: Sequence[x509.Certificate], now: datetime, *, check: str) -> None:
    """Every certificate in ``chain`` (root included) is valid at ``now``."""
    for depth, cert in enumerate(chain):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AttestationError(
                f"certificate {depth} of the chain is valid only from "
                f"{cert.not_valid_before_utc.isoformat()} to "
                f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
                check=check,
            )


def check_ca(cert: x509.Certificate, *, below: int, check: str) -> None:
    """``cert`` may issue certificates, with ``below`` more CA certificates under it."""
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        raise AttestationError(
            "a CA certificate lacks basic constraints or key usage", check=check
        ) from None
    if not basic.ca or not usage.key_cert_sign:
        raise AttestationError("an issuing certificate is not a CA certificate", check=check)
    if basic.path_length is not None and basic.path_length < below:
        raise AttestationError(
            f"a CA certificate allows {basic.path_length} CAs below it, the chain has {below}",
            check=check,
        )


def check_signing_leaf(cert: x509.Certificate, *, check: str) -> None:
    """``cert`` is an end-entity certificate whose key may make digital signatures."""
    try:
        extensions = cert.extensions
    except ValueError:
        raise AttestationError(
            "the signing certificate's extensions are malformed", check=check
        ) from None
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise AttestationError("the signing certificate has no key usage", check=check) from None
    try:
        is_ca = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False  # RFC 5280 4.2.1.9: absent basic constraints mean an end entity
    if is_ca or not usage.digital_signature:
        raise AttestationError(
            "the signing certificate must be an end entity with the digitalSignature key usage",
            check=check,
        )
