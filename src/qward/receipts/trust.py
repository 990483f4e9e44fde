"""The trust bundle: the public keys a verifier pins, obtained out of band from the operator.

A verifier never trusts keys that arrive inside the evidence it is checking; it looks up the key ids
named by the evidence in this bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

from qward.crypto.keys import HPKERecipientKey, HybridVerifyKey
from qward.encoding import canonical_json, parse_canonical_json
from qward.errors import FormatError, UnknownKeyError
from qward.tlog.note import NoteVerifier

__all__ = ["TRUST_FORMAT", "TrustBundle"]

TRUST_FORMAT = "qward/trust/v1"
_MAX_TRUST_BYTES = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class TrustBundle:
    """Pinned public keys: the log's checkpoint keys, receipt keys and the sealing key."""

    origin: str
    log_verifiers: tuple[NoteVerifier, ...]
    receipt_keys: tuple[HybridVerifyKey, ...]
    hpke_recipient: HPKERecipientKey

    def receipt_key(self, key_id: str) -> HybridVerifyKey:
        """The pinned receipt key with ``key_id``."""
        for key in self.receipt_keys:
            if key.key_id == key_id:
                return key
        raise UnknownKeyError(
            f"receipt is signed by key {key_id}, which is not in the trust bundle"
        )

    def to_bytes(self) -> bytes:
        """Canonical JSON encoding."""
        return canonical_json(
            {
                "format": TRUST_FORMAT,
                "origin": self.origin,
                "log_verifiers": [v.to_vkey() for v in self.log_verifiers],
                "receipt_keys": [k.to_json() for k in self.receipt_keys],
                "hpke_recipient": self.hpke_recipient.to_json(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TrustBundle:
        """Strictly parse a trust bundle."""
        if len(data) > _MAX_TRUST_BYTES:
            raise FormatError("trust bundle is over the size limit")
        doc = parse_canonical_json(data, what="trust bundle")
        if doc.get("format") != TRUST_FORMAT:
            raise FormatError(f"trust bundle: unsupported format {doc.get('format')!r}")
        origin, vkeys, rkeys = doc.get("origin"), doc.get("log_verifiers"), doc.get("receipt_keys")
        if (
            not isinstance(origin, str)
            or not isinstance(vkeys, list)
            or not isinstance(rkeys, list)
        ):
            raise FormatError("trust bundle: origin, log_verifiers and receipt_keys are required")
        if not vkeys or not rkeys:
            raise FormatError("trust bundle: needs at least one log verifier and one receipt key")
        if not all(isinstance(v, str) for v in vkeys):
            raise FormatError("trust bundle: log verifiers must be verifier key strings")
        return cls(
            origin=origin,
            log_verifiers=tuple(NoteVerifier.from_vkey(v) for v in vkeys),
            receipt_keys=tuple(HybridVerifyKey.from_json(k) for k in rkeys),
            hpke_recipient=HPKERecipientKey.from_json(doc.get("hpke_recipient")),
        )
