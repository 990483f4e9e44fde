"""What a core answers to "attest to this nonce": its trust bundle and evidence that binds it.

The trust bundle travels as the exact canonical bytes the evidence binds (``binding``), so a
client appraises the very keys it is about to pin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from qward.attestation.evidence import Evidence
from qward.encoding import canonical_json, parse_canonical_json
from qward.errors import FormatError

__all__ = ["RESPONSE_FORMAT", "AttestationResponse"]

RESPONSE_FORMAT = "qward/attestation-response/v1"
_MAX_BYTES = 512 * 1024


@dataclass(frozen=True, kw_only=True)
class AttestationResponse:
    """The trust bundle bytes, the evidence, where the core logged it, and when it was taken."""

    trust: bytes
    evidence: Evidence
    nonce: bytes
    log_index: int
    collected_at: datetime

    def to_bytes(self) -> bytes:
        """Canonical JSON encoding."""
        return canonical_json(
            {
                "format": RESPONSE_FORMAT,
                "trust": parse_canonical_json(self.trust, what="trust bundle"),
                "evidence": self.evidence.to_json(),
                "nonce": self.nonce.hex(),
                "log_index": self.log_index,
                "collected_at": self.collected_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationResponse:
        """Strictly parse a response, through a size limit."""
        if len(data) > _MAX_BYTES:
            raise FormatError("attestation response is over the size limit")
        doc = parse_canonical_json(data, what="attestation response")
        if doc.get("format") != RESPONSE_FORMAT:
            raise FormatError("attestation response: not a qward/attestation-response/v1 object")
        trust, nonce, index, at = (
            doc.get(k) for k in ("trust", "nonce", "log_index", "collected_at")
        )
        if not isinstance(trust, dict) or not isinstance(nonce, str) or not isinstance(at, str):
            raise FormatError("attestation response: trust, nonce and collected_at are required")
        if type(index) is not int or index < 0:
            raise FormatError("attestation response: log_index must be a non-negative integer")
        try:
            collected = datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            nonce_bytes = bytes.fromhex(nonce)
        except ValueError:
            raise FormatError("attestation response: nonce or collected_at is malformed") from None
        return cls(
            trust=canonical_json(trust),
            evidence=Evidence.from_json(doc.get("evidence")),
            nonce=nonce_bytes,
            log_index=index,
            collected_at=collected,
        )
