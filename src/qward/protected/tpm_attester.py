"""TPM 2.0 evidence: the core's measurement extended into PCR 23 and quoted by an attestation key.

WARNING: protected side. Only ``qward.protected`` may import this module; it drives the TPM.

What a quote proves, and what it does not. The Attestation Key (AK) is a restricted signing key,
so the TPM signs only structures it generated itself (``TPM_GENERATED_VALUE``): the quote's PCR
values and qualifying data were really in that TPM. PCRs 0-7 hold the firmware and boot loader
measurements. PCR 23 holds the core's software measurement (``core_measurement()``), extended
once from its reset value, so a verifier compares it with ``pcr_after_extend(release digest)``.

Why PCR 23: the TCG PC Client Platform Firmware Profile (section 3.3.4) gives PCR 16 to debug and
PCR 23 to "application support"; firmware, boot loaders and IMA (PCR 10) leave it alone, and it
is resettable at locality 0 so one application can own it. That same resettability means any
process with access to the TPM can reset PCR 23 and extend any value: PCR 23 is only as honest as
the operating system the boot PCRs (and IMA, if used) vouch for. The core assumes it is the only
user of PCR 23 on its machine; when PCR 23 holds anything but its own measurement it resets it.

The AK is a primary key of the endorsement hierarchy made from a fixed template
(``AK_TEMPLATE``): the TPM derives a primary key from its hierarchy seed and the template, so the
same TPM yields the same AK every time without storing anything. Alternatively ``ak_handle``
names a persistent key (for example one provisioned by the cloud with ``persist_ak``).

Who vouches for the AK. On a cloud vTPM the provider issues the AK certificate (Azure, Google
Cloud). An operator who runs a platform CA for their own TPMs (or for swtpm) issues one with
``certify_ak``; either way the chain (AK certificate, then its issuers) is given in
``QWARD_TPM_AK_CERT`` as a PEM (or single DER) file. Without it the quote can be produced but
nobody can verify it, so the TPM source counts as unusable.

tpm2-pytss (``pip install 'qward[tpm]'``, which needs the tpm2-tss libraries: Debian
``libtss2-dev``) is imported only when a TPM is used.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID, ObjectIdentifier

from qward.attestation.evidence import Evidence
from qward.attestation.measurement import CoreMeasurement, pcr_after_extend
from qward.attestation.tpm_structures import (
    TPM_ALG_SHA256,
    TPMSAttest,
    is_restricted_signing_key,
    public_key_from_tpmt_public,
)
from qward.encoding import read_limited
from qward.errors import AttestationError, InputError

__all__ = [
    "AK_CERT_ENV",
    "AK_HANDLE_ENV",
    "DEVICE",
    "EVENT_LOG",
    "MEASUREMENT_PCR",
    "QUOTED_PCRS",
    "TCG_KP_AIK_CERTIFICATE",
    "TCTI_ENV",
    "TPMConfig",
    "ak_public",
    "certify_ak",
    "load_certificate_chain",
    "persist_ak",
    "quote",
]

TCTI_ENV = "QWARD_TPM_TCTI"
AK_HANDLE_ENV = "QWARD_TPM_AK_HANDLE"
AK_CERT_ENV = "QWARD_TPM_AK_CERT"
#: The kernel's TPM resource manager; several processes can share it, unlike /dev/tpm0.
DEVICE = "/dev/tpmrm0"
#: The firmware's TCG event log for PCRs 0-7, attached when the TPM is the machine's own.
EVENT_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
MEASUREMENT_PCR = 23
QUOTED_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, MEASUREMENT_PCR)
#: tcg-kp-AIKCertificate (TCG EK Credential Profile): the key certified is a TPM attestation key.
TCG_KP_AIK_CERTIFICATE = ObjectIdentifier("2.23.133.8.3")
_MAX_CHAIN_BYTES = 64 * 1024
_MAX_EVENT_LOG_BYTES = 128 * 1024
_QUOTE_ATTEMPTS = 3
# One TPM conversation at a time in this process: the PCR 23 check-then-extend must not interleave.
_TPM_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class TPMConfig:
    """Which TPM to talk to (a TCTI string), which AK to use and the AK's certificate chain."""

    tcti: str
    ak_handle: int | None = None
    ak_certificates: tuple[bytes, ...] = ()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, device: str = DEVICE
    ) -> TPMConfig | None:
        """``QWARD_TPM_TCTI`` (else ``device`` if it exists), ``QWARD_TPM_AK_HANDLE``, ``..._CERT``.

        ``None`` when no TPM is configured or present.
        """
        env = os.environ if environ is None else environ
        tcti = env.get(TCTI_ENV) or (f"device:{device}" if os.path.exists(device) else "")
        if not tcti:
            return None
        handle = env.get(AK_HANDLE_ENV, "")
        try:
            ak_handle = int(handle, 16) if handle else None
        except ValueError:
            raise InputError(f"{AK_HANDLE_ENV} must be a hex handle such as 0x81010002") from None
        chain = env.get(AK_CERT_ENV, "")
        certificates = load_certificate_chain(chain) if chain else ()
        return cls(tcti=tcti, ak_handle=ak_handle, ak_certificates=certificates)


def load_certificate_chain(path: str) -> tuple[bytes, ...]:
    """DER certificates from a PEM file (leaf first) or a single DER certificate."""
    data = read_limited(path, limit=_MAX_CHAIN_BYTES, what="TPM AK certificate chain")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise InputError(f"{path}: not a PEM or DER certificate chain") from None
    return tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)


def _tss() -> ModuleType:
    try:
        import tpm2_pytss
    except ImportError:
        raise AttestationError(
            "a TPM is configured but tpm2-pytss is not installed (pip install 'qward[tpm]')",
            check="tpm-library",
        ) from None
    return tpm2_pytss  # type: ignore[no-any-return]


def _ak_template(tss: ModuleType) -> Any:
    attrs = tss.TPMA_OBJECT
    # A restricted signing key that never leaves this TPM: the shape TPM2_Quote requires.
    shape = (
        attrs.RESTRICTED
        | attrs.SIGN_ENCRYPT
        | attrs.FIXEDTPM
        | attrs.FIXEDPARENT
        | attrs.SENSITIVEDATAORIGIN
        | attrs.USERWITHAUTH
    )
    return tss.TPM2B_PUBLIC.parse(
        "ecc256:ecdsa-sha256:null", nameAlg="sha256", objectAttributes=shape
    )


def _open_ak(tss: ModuleType, esapi: Any, config: TPMConfig) -> tuple[Any, bytes, bool]:
    """The AK's ESYS handle, its marshaled TPMT_PUBLIC and whether it must be flushed."""
    if config.ak_handle is not None:
        try:
            handle = esapi.tr_from_tpmpublic(config.ak_handle)
            public, _, _ = esapi.read_public(handle)
        except tss.TSS2_Exception as exc:
            raise AttestationError(
                f"no key at persistent handle {config.ak_handle:#x}: {exc}", check="tpm-ak"
            ) from None
        return handle, bytes(public.publicArea.marshal()), False
    handle, public, *_ = esapi.create_primary(None, _ak_template(tss), tss.ESYS_TR.ENDORSEMENT)
    return handle, bytes(public.publicArea.marshal()), True


def ak_public(config: TPMConfig) -> bytes:
    """The marshaled ``TPMT_PUBLIC`` of the AK ``config`` names: what ``certify_ak`` takes."""
    tss = _tss()
    with _TPM_LOCK, _session(tss, config) as esapi:
        handle, public, transient = _open_ak(tss, esapi, config)
        if transient:
            esapi.flush_context(handle)
        return public


def persist_ak(config: TPMConfig, handle: int) -> bytes:
    """Make the template AK persistent at ``handle`` (owner hierarchy); its ``TPMT_PUBLIC``."""
    tss = _tss()
    with _TPM_LOCK, _session(tss, config) as esapi:
        transient, public, _ = _open_ak(tss, esapi, TPMConfig(tcti=config.tcti))
        esapi.evict_control(tss.ESYS_TR.OWNER, transient, handle)
        esapi.flush_context(transient)
        return public


def quote(
    config: TPMConfig,
    report_data: bytes,
    measurement: CoreMeasurement,
    *,
    warn: Callable[[str], None],
) -> Evidence:
    """Extend ``measurement`` into PCR 23 (once per boot) and quote ``QUOTED_PCRS``.

    The qualifying data is ``report_data[:32]`` (``qward.attestation.binding.expected_field``).
    ``warn`` receives operator-facing warnings (PCR 23 reset, no event log).
    """
    if len(report_data) != 64:
        raise InputError("report_data must be the 64-byte key binding")
    if not config.ak_certificates:
        raise AttestationError(f"no AK certificate chain ({AK_CERT_ENV})", check="ak-certificate")
    tss = _tss()
    with _TPM_LOCK, _session(tss, config) as esapi:
        _measure(tss, esapi, measurement.digest, warn)
        handle, public, transient = _open_ak(tss, esapi, config)
        try:
            _check_certificate(public, config.ak_certificates[0])
            attest, signature, values = _quote_consistent(tss, esapi, handle, report_data[:32])
        finally:
            if transient:
                esapi.flush_context(handle)
    return Evidence(
        format="tpm",
        report=attest,
        signature=signature,
        certificates=config.ak_certificates,
        pcrs={f"sha256:{i}": v for i, v in zip(QUOTED_PCRS, values, strict=True)},
        event_log=_event_log(config, warn),
    )


@contextmanager
def _session(tss: ModuleType, config: TPMConfig) -> Iterator[Any]:
    try:
        esapi = tss.ESAPI(config.tcti)
    except (tss.TSS2_Exception, RuntimeError, ValueError) as exc:
        raise AttestationError(
            f"cannot open TPM {config.tcti!r}: {exc}", check="tpm-device"
        ) from None
    try:
        yield esapi
    finally:
        esapi.close()


def _read_pcr(tss: ModuleType, esapi: Any, index: int) -> bytes:
    # One PCR per read: a TPML_DIGEST answer holds at most 8 digests, and per-PCR reads keep the
    # returned order unambiguous.
    _, _, digests = esapi.pcr_read(f"sha256:{index}")
    if len(digests) != 1:
        raise AttestationError(f"the TPM has no SHA-256 PCR {index}", check="tpm-pcr-bank")
    return bytes(digests[0])


def _measure(tss: ModuleType, esapi: Any, digest: bytes, warn: Callable[[str], None]) -> None:
    expected = pcr_after_extend(digest)
    current = _read_pcr(tss, esapi, MEASUREMENT_PCR)
    if current == expected:
        return  # Measured already since this boot (or since the last reset).
    pcr = tss.ESYS_TR.PCR0 + MEASUREMENT_PCR
    if current != bytes(32):
        warn(
            f"TPM PCR {MEASUREMENT_PCR} held {current.hex()}, not this core's measurement; "
            "resetting it (another core version ran, or something else uses this PCR)"
        )
        esapi.pcr_reset(pcr)
    value = tss.TPMT_HA.unmarshal(TPM_ALG_SHA256.to_bytes(2, "big") + digest)[0]
    esapi.pcr_extend(pcr, tss.TPML_DIGEST_VALUES([value]))
    if _read_pcr(tss, esapi, MEASUREMENT_PCR) != expected:
        raise AttestationError(
            f"PCR {MEASUREMENT_PCR} changed while the core measured itself", check="tpm-measure"
        )


def _quote_consistent(
    tss: ModuleType, esapi: Any, handle: Any, qualifying: bytes
) -> tuple[bytes, bytes, list[bytes]]:
    selection = "sha256:" + ",".join(str(i) for i in QUOTED_PCRS)
    for _ in range(_QUOTE_ATTEMPTS):
        quoted, signature = esapi.quote(handle, selection, tss.TPM2B_DATA(qualifying))
        attest = bytes(quoted.attestationData)
        values = [_read_pcr(tss, esapi, i) for i in QUOTED_PCRS]
        # The PCRs are read after the quote; an extend in between (a boot PCR never changes, but
        # a shared TPM might see one) shows as a digest mismatch, and the quote is taken again.
        if TPMSAttest.from_bytes(attest).pcr_digest == hashlib.sha256(b"".join(values)).digest():
            return attest, bytes(signature.marshal()), values
        time.sleep(0.01)
    raise AttestationError("PCR values kept changing during the quote", check="tpm-quote")


def _check_certificate(public: bytes, certificate: bytes) -> None:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    ak_key = public_key_from_tpmt_public(public).public_bytes(der, spki)
    cert_key = x509.load_der_x509_certificate(certificate).public_key().public_bytes(der, spki)
    if ak_key != cert_key:
        raise AttestationError(
            f"the first certificate in {AK_CERT_ENV} is not for this TPM's AK",
            check="ak-certificate",
        )


def _event_log(config: TPMConfig, warn: Callable[[str], None]) -> bytes:
    if config.tcti != f"device:{DEVICE}" or not os.path.exists(EVENT_LOG):
        return b""
    try:
        return read_limited(EVENT_LOG, limit=_MAX_EVENT_LOG_BYTES, what="TCG event log")
    except InputError as exc:
        warn(f"TPM evidence goes without its event log: {exc}")
        return b""


def certify_ak(
    ak_public: bytes,
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    *,
    now: datetime,
    lifetime: timedelta = timedelta(days=365),
    subject: str = "qward TPM attestation key",
) -> x509.Certificate:
    """Issue an AK certificate for the key in ``ak_public`` (a marshaled ``TPMT_PUBLIC``).

    For an operator's own platform CA (and the swtpm tests); cloud vTPMs come with the provider's
    AK certificate instead. Only a restricted signing key is certified: such a key signs only
    what the TPM generated, which is what makes its quotes evidence. The CA is trusted to issue
    this only after checking the key is in a TPM it knows (for example by TPM2_ActivateCredential
    against the TPM's endorsement key); this function does not do that check.
    """
    ak_key = public_key_from_tpmt_public(ak_public)
    if not is_restricted_signing_key(ak_public):
        raise InputError("certify_ak: the key is not a restricted signing key")
    issuer_key = ca_cert.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(ca_cert.subject)
        .public_key(ak_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_signing_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([TCG_KP_AIK_CERTIFICATE]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ak_key), critical=False)
    )
    if isinstance(issuer_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        ski = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key)
        builder = builder.add_extension(ski, critical=False)
    edwards = isinstance(ca_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return builder.sign(ca_key, None if edwards else hashes.SHA256())


def _signing_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
