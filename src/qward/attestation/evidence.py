"""Evidence as collected, claims as verified, and the interface every evidence format implements.

A verifier turns ``Evidence`` into ``Claims`` or raises ``AttestationError`` naming the check that
failed. It checks the vendor's signatures and certificate chain at an injected instant ``now`` and
parses what the signed bytes say; it decides nothing about whether those measurements are
acceptable: that is appraisal (``qward.attestation.appraisal``), which compares claims with a
policy, the expected key binding and the client's nonce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError

__all__ = [
    "EVIDENCE_FORMAT",
    "FORMATS",
    "MAX_EVIDENCE_BYTES",
    "SOFTWARE_ONLY",
    "Claims",
    "Evidence",
    "EvidenceVerifier",
]

EVIDENCE_FORMAT = "qward/evidence/v1"
MAX_EVIDENCE_BYTES = 256 * 1024
SOFTWARE_ONLY = "software-only"
#: Evidence formats, by the name that travels in evidence, claims and receipts.
FORMATS = ("sev-snp", "tdx", "nitro", "tpm", SOFTWARE_ONLY)


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """One piece of evidence exactly as the platform produced it.

    ``report`` is the signed object: the SEV-SNP ATTESTATION_REPORT, the TDX quote, the Nitro
    COSE_Sign1 document or the TPM's TPMS_ATTEST. ``certificates`` are DER certificates that come
    with it but outside the signed bytes, leaf first (SEV-SNP: VCEK, ASK[, ARK]; TPM: the AK
    certificate and its issuers). ``signature`` is the TPM's TPMT_SIGNATURE (empty for formats
    whose signature is inside ``report``). ``pcrs`` are the TPM's PCR values the quote covers,
    keyed ``"sha256:23"``; ``event_log`` is the TCG event log, when there is one.
    """

    format: str
    report: bytes = b""
    certificates: tuple[bytes, ...] = ()
    signature: bytes = b""
    pcrs: dict[str, bytes] = field(default_factory=dict)
    event_log: bytes = b""

    def to_json(self) -> dict[str, Any]:
        """The JSON object form (binary members base64)."""
        return {
            "format": EVIDENCE_FORMAT,
            "kind": self.format,
            "report": b64encode(self.report),
            "certificates": [b64encode(c) for c in self.certificates],
            "signature": b64encode(self.signature),
            "pcrs": {k: self.pcrs[k].hex() for k in sorted(self.pcrs)},
            "event_log": b64encode(self.event_log),
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON encoding."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, doc: object) -> Evidence:
        """Strictly parse the JSON object form."""
        if not isinstance(doc, dict) or doc.get("format") != EVIDENCE_FORMAT:
            raise FormatError("evidence: not a qward/evidence/v1 object")
        kind, certs, pcrs = doc.get("kind"), doc.get("certificates", []), doc.get("pcrs", {})
        if kind not in FORMATS:
            raise FormatError(f"evidence: unknown kind {kind!r}; expected one of {FORMATS}")
        if not isinstance(certs, list) or len(certs) > 8 or not isinstance(pcrs, dict):
            raise FormatError("evidence: certificates must be a list (at most 8), pcrs an object")
        try:
            pcr_values = {str(k): bytes.fromhex(v) for k, v in pcrs.items()}
        except (TypeError, ValueError):
            raise FormatError("evidence: PCR values must be hex strings") from None
        return cls(
            format=kind,
            report=b64decode(doc.get("report", ""), what="evidence report"),
            certificates=tuple(b64decode(c, what="evidence certificate") for c in certs),
            signature=b64decode(doc.get("signature", ""), what="evidence signature"),
            pcrs=pcr_values,
            event_log=b64decode(doc.get("event_log", ""), what="evidence event log"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Evidence:
        """Strictly parse canonical JSON evidence, through a size limit."""
        if len(data) > MAX_EVIDENCE_BYTES:
            raise FormatError(f"evidence is over the {MAX_EVIDENCE_BYTES}-byte limit")
        return cls.from_json(parse_canonical_json(data, what="evidence"))


@dataclass(frozen=True, kw_only=True)
class Claims:
    """What verified evidence says, in one shape for every format.

    ``measurements`` name what was measured, lower-case hex: SEV-SNP ``{"measurement"}``; TDX
    ``{"mrtd", "rtmr0".."rtmr3", "mrseam"}``; Nitro ``{"pcr0".."pcr15"}`` (non-zero ones); TPM
    ``{"sha256:N"}`` for each quoted PCR. ``report_data`` is the field the attester chose: SEV-SNP
    and TDX REPORT_DATA (64 bytes), Nitro ``user_data``, TPM qualifying data (``extraData``).
    ``nonce`` is Nitro's separate nonce (``None`` elsewhere). ``tcb`` holds the platform's security
    versions as integers (SEV-SNP ``bootloader``, ``tee``, ``snp``, ``microcode`` as reported;
    TDX ``tee_tcb_svn.N`` and ``qe_svn``/``pce_svn``; empty where the format has none). ``platform``
    holds descriptive strings (chip id, product line, module id, firmware). ``issued_at`` is the
    signed time where the format has one (Nitro), else ``None``.
    """

    format: str
    measurements: dict[str, str]
    report_data: bytes
    debug: bool
    tcb: dict[str, int] = field(default_factory=dict)
    platform: dict[str, str] = field(default_factory=dict)
    nonce: bytes | None = None
    issued_at: datetime | None = None


class EvidenceVerifier(Protocol):
    """Checks one evidence format: vendor signature, certificate chain to a pinned root, parsing.

    Implementations are constructed with their trust anchors (defaulting to the roots pinned in
    ``qward.attestation.roots``) and raise ``AttestationError`` with ``check`` naming what failed.
    """

    format: str

    def verify(self, evidence: Evidence, *, now: datetime) -> Claims:
        """The claims ``evidence`` proves, or ``AttestationError``."""
        ...
