"""TPM 2.0 quotes: a ``TPMS_ATTEST`` signed by an attestation key (AK) the verifier trusts.

Checks, in order (TCG "TPM 2.0 Library" Part 2 for the layouts, Part 3 §18.4 ``TPM2_Quote``):

1. Parse: ``report`` is a ``TPMS_ATTEST`` whose magic is ``TPM_GENERATED_VALUE`` (the TPM made
   it, Part 2 §6.2) and whose type is ``TPM_ST_ATTEST_QUOTE``; ``signature`` a ``TPMT_SIGNATURE``.
   Both are read strictly (``qward.attestation.tpm_structures``).
2. AK: from an AK certificate chain (``certificates``, leaf first) ending at, or issued by, one of
   ``roots`` and valid at ``now``; or, with no such chain, one of the pinned ``ak_public_keys``.
3. Signature: RSASSA-PKCS1-v1_5, RSASSA-PSS or ECDSA P-256, all with SHA-256, over the
   ``TPMS_ATTEST`` bytes.
4. PCRs: the supplied values are exactly the selected ones, and SHA-256 over their concatenation
   (bank by bank in selection order, indices ascending, Part 3 §18.4.1) equals ``pcrDigest``.
5. Event log, when supplied: replaying its SHA-256 bank gives exactly the quoted value of every
   PCR it extends (``qward.attestation.tpm_eventlog``).

A TPM has no debug mode, so ``Claims.debug`` is always ``False``: whether the platform booted
something debuggable is read from the PCRs by appraisal policy, not from a flag.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import pairwise

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from qward.attestation import _x509_path as path
from qward.attestation.evidence import Claims, Evidence
from qward.attestation.tpm_eventlog import check_event_log
from qward.attestation.tpm_structures import (
    BANKS,
    TPM_ALG_ECDSA,
    TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    TPMSAttest,
    TPMTSignature,
)
from qward.errors import AttestationError, FormatError, InputError

__all__ = ["AKPublicKey", "TPMQuoteVerifier", "expected_pcr_digest"]

AKPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_MAX_CHAIN = 8
_MIN_RSA_BITS = 2048


def _fail(check: str, message: str) -> AttestationError:
    return AttestationError(message, check=check)


def expected_pcr_digest(attest: TPMSAttest, pcrs: Mapping[str, bytes]) -> bytes:
    """SHA-256 over the selected PCR values, in TPM order; every one must be supplied, no more."""
    unknown = [s.hash_alg for s in attest.pcr_selections if s.hash_alg not in BANKS]
    if unknown:
        raise _fail("tpm-pcr-selection", f"unsupported PCR bank {unknown[0]:#06x}")
    wanted = [(*BANKS[s.hash_alg], i) for s in attest.pcr_selections for i in s.indices]
    keys = [f"{bank}:{index}" for bank, _, index in wanted]
    missing = [k for k in keys if k not in pcrs]
    extra = sorted(set(pcrs) - set(keys))
    if missing or extra or len(set(keys)) != len(keys):
        raise _fail("tpm-pcr-selection", f"PCRs missing {missing}, not selected {extra}")
    for key, (_, size, _) in zip(keys, wanted, strict=True):
        if len(pcrs[key]) != size:
            raise _fail("tpm-pcr-selection", f"PCR {key} must be {size} bytes")
    return hashlib.sha256(b"".join(pcrs[k] for k in keys)).digest()


class TPMQuoteVerifier:
    """Verifies TPM 2.0 quotes by an AK certified under ``roots`` or pinned by public key."""

    format = "tpm"

    def __init__(
        self,
        *,
        roots: tuple[x509.Certificate, ...] = (),
        ak_public_keys: tuple[AKPublicKey, ...] = (),
    ) -> None:
        self._roots = roots
        self._root_ders = frozenset(path.der(r) for r in roots)
        self._ak_keys = ak_public_keys

    def verify(self, evidence: Evidence, *, now: datetime) -> Claims:
        """The claims a TPM quote proves at ``now``, or ``AttestationError``."""
        if now.tzinfo is None:
            raise InputError("attestation: now must be timezone-aware")
        if evidence.format != self.format:
            raise _fail("format", f"evidence is {evidence.format!r}, not 'tpm'")
        attest, signature = _parse(evidence.report, evidence.signature)
        keys = self._ak_keys_for(evidence.certificates, now.astimezone(UTC))
        if not any(_signed_by(key, signature, evidence.report) for key in keys):
            raise _fail("tpm-signature", "the quote signature does not verify under the AK")
        digest = expected_pcr_digest(attest, evidence.pcrs)
        if not hmac.compare_digest(digest, attest.pcr_digest):
            raise _fail("tpm-pcr-digest", "the supplied PCR values do not match the quoted digest")
        if evidence.event_log:
            check_event_log(evidence.event_log, evidence.pcrs)
        return _claims(attest, evidence.pcrs)

    def _ak_keys_for(self, certificates: tuple[bytes, ...], now: datetime) -> list[AKPublicKey]:
        """Step 2: the AK public keys this evidence may be checked with."""
        if certificates and self._roots:
            return [self._certified_ak(certificates, now)]
        if self._ak_keys:
            return list(self._ak_keys)
        raise _fail("tpm-ak", "no AK certificate chain to a trusted root and no pinned AK key")

    def _certified_ak(self, certificates: tuple[bytes, ...], now: datetime) -> AKPublicKey:
        if len(certificates) > _MAX_CHAIN:
            raise _fail("tpm-ak-chain", f"more than {_MAX_CHAIN} certificates")
        chain = [
            path.load_der(c, check="tpm-ak-chain", what="an AK chain entry") for c in certificates
        ]
        for cert, issuer in pairwise(chain):
            path.check_issued_by(cert, issuer, check="tpm-ak-chain")
        if certificates[-1] not in self._root_ders:
            chain.append(self._issuing_root(chain[-1]))
        path.check_validity(chain, now, check="tpm-certificate-validity")
        for position, ca in enumerate(chain[1:], start=1):
            path.check_ca(ca, below=position - 1, check="tpm-certificate-constraints")
        path.check_signing_leaf(chain[0], check="tpm-certificate-constraints")
        key = chain[0].public_key()
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise _fail("tpm-ak-chain", "the AK certificate's key is neither RSA nor ECDSA")
        return key

    def _issuing_root(self, top: x509.Certificate) -> x509.Certificate:
        for root in self._roots:
            try:
                path.check_issued_by(top, root, check="tpm-ak-root")
            except AttestationError:
                continue
            return root
        raise _fail("tpm-ak-root", "the AK certificate chain does not end at a trusted root")


def _parse(report: bytes, signature: bytes) -> tuple[TPMSAttest, TPMTSignature]:
    """Step 1: magic and type first, so each has its own check name, then the strict parse."""
    if len(report) < 6:
        raise _fail("tpm-format", "TPMS_ATTEST is truncated")
    if int.from_bytes(report[:4], "big") != TPM_GENERATED_VALUE:
        raise _fail("tpm-magic", "TPMS_ATTEST magic is not TPM_GENERATED_VALUE")
    if int.from_bytes(report[4:6], "big") != TPM_ST_ATTEST_QUOTE:
        raise _fail("tpm-type", "TPMS_ATTEST type is not TPM_ST_ATTEST_QUOTE")
    try:
        return TPMSAttest.from_bytes(report), TPMTSignature.from_bytes(signature)
    except FormatError as exc:
        raise _fail("tpm-format", str(exc)) from None


def _signed_by(key: AKPublicKey, sig: TPMTSignature, message: bytes) -> bool:
    """Step 3: whether ``sig`` over ``message`` verifies under ``key`` (SHA-256 only)."""
    if sig.hash_alg != TPM_ALG_SHA256:
        raise _fail("tpm-signature", f"signature hash {sig.hash_alg:#06x} is not SHA-256")
    try:
        if sig.sig_alg == TPM_ALG_ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name != "secp256r1":
                return False
            der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
            key.verify(der, message, ec.ECDSA(SHA256()))
            return True
        if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS:
            if sig.sig_alg == TPM_ALG_RSASSA:
                key.verify(sig.signature, message, padding.PKCS1v15(), SHA256())
                return True
            if sig.sig_alg == TPM_ALG_RSAPSS:
                # TPMs differ in the salt length they use (Part 1 §B.7), so any is accepted.
                pss = padding.PSS(mgf=padding.MGF1(SHA256()), salt_length=padding.PSS.AUTO)
                key.verify(sig.signature, message, pss, SHA256())
                return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _claims(attest: TPMSAttest, pcrs: Mapping[str, bytes]) -> Claims:
    clock = attest.clock_info
    return Claims(
        format="tpm",
        measurements={k: pcrs[k].hex() for k in sorted(pcrs, key=_pcr_order)},
        report_data=attest.extra_data,
        debug=False,
        # The 64-bit firmware version is two 32-bit halves (vendor-defined; most put major.minor
        # in the high half): JSON carries integers exactly only up to 2**53.
        tcb={
            "firmware_version_high": attest.firmware_version >> 32,
            "firmware_version_low": attest.firmware_version & 0xFFFFFFFF,
            "reset_count": clock.reset_count,
            "restart_count": clock.restart_count,
        },
        platform={
            "clock": str(clock.clock),
            "qualified_signer": attest.qualified_signer.hex(),
            "safe": "yes" if clock.safe else "no",
        },
    )


def _pcr_order(key: str) -> tuple[str, int]:
    bank, _, index = key.partition(":")
    return bank, int(index)
