"""The verifier for each evidence format, with the trust anchors a policy adds."""

from __future__ import annotations

from cryptography import x509

from qward.attestation.appraisal import AppraisalPolicy
from qward.attestation.evidence import EvidenceVerifier
from qward.attestation.nitro import NitroVerifier
from qward.attestation.sev_snp import SEVSNPVerifier
from qward.attestation.tdx import TDXVerifier
from qward.attestation.tpm import TPMQuoteVerifier
from qward.errors import FormatError

__all__ = ["verifiers_for"]


def verifiers_for(policy: AppraisalPolicy) -> dict[str, EvidenceVerifier]:
    """One verifier per format: vendor roots pinned in the package; TPM AK roots from ``policy``
    (a TPM's attestation key is certified by whoever runs the platform, not by one vendor)."""
    try:
        tpm_roots = tuple(x509.load_pem_x509_certificate(pem) for pem in policy.tpm_roots)
    except ValueError:
        raise FormatError("appraisal policy: a TPM root is not a PEM certificate") from None
    return {
        "sev-snp": SEVSNPVerifier(),
        "tdx": TDXVerifier(),
        "nitro": NitroVerifier(),
        "tpm": TPMQuoteVerifier(roots=tpm_roots),
    }
