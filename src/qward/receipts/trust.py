"""The trust bundle: the public keys a verifier pins, obtained out of band from the operator.

A verifier never trusts keys that arrive inside the evidence it is checking; it looks up the key ids
named by the evidence in this bundle. The bundle may also pin witnesses and a quorum: then every
checkpoint a receipt rests on must carry that many valid witness cosignatures.

A bundle pinned by ``qward trust fetch`` also carries ``attestation``: the client's appraisal of
hardware evidence that bound exactly these keys (``qward.attestation.appraisal``). The evidence
binds the bundle without that member (``manifest_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from qward.crypto.keys import HPKERecipientKey, ReceiptVerifyKey
from qward.encoding import canonical_json, parse_canonical_json
from qward.errors import FormatError, InputError, UnknownKeyError
from qward.tlog.note import NoteVerifier
from qward.tlog.witness_policy import Quorum, UnsafeNoWitnesses, WitnessPolicy

__all__ = ["TRUST_FORMAT", "TrustBundle"]

TRUST_FORMAT = "qward/trust/v1"
_MAX_TRUST_BYTES = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class TrustBundle:
    """Pinned public keys: the log's checkpoint keys, receipt keys and the sealing key."""

    origin: str
    log_verifiers: tuple[NoteVerifier, ...]
    receipt_keys: tuple[ReceiptVerifyKey, ...]
    hpke_recipient: HPKERecipientKey
    #: Which witness cosignatures a receipt's checkpoint must carry (none unless configured).
    witness_policy: WitnessPolicy = field(default_factory=UnsafeNoWitnesses)
    #: The log's checkpoint key versions, each a set every key of which signs; a checkpoint must
    #: be signed by one whole set. Empty means one set: ``log_verifiers``.
    log_key_versions: tuple[tuple[NoteVerifier, ...], ...] = ()
    #: The client's appraisal result (``qward/attestation-result/v1``), if it attested the core.
    attestation: dict[str, Any] | None = None

    @property
    def log_key_sets(self) -> tuple[tuple[NoteVerifier, ...], ...]:
        """The sets of checkpoint keys, one of which must have signed every key of a checkpoint."""
        return self.log_key_versions or (self.log_verifiers,)

    def receipt_key(self, key_id: str) -> ReceiptVerifyKey:
        """The pinned receipt key with ``key_id``."""
        for key in self.receipt_keys:
            if key.key_id == key_id:
                return key
        raise UnknownKeyError(
            f"receipt is signed by key {key_id}, which is not in the trust bundle"
        )

    def manifest_bytes(self) -> bytes:
        """The canonical bundle without the client's appraisal: the bytes evidence binds."""
        return replace(self, attestation=None).to_bytes()

    def to_bytes(self) -> bytes:
        """Canonical JSON encoding."""
        doc: dict[str, Any] = {
            "format": TRUST_FORMAT,
            "origin": self.origin,
            "log_verifiers": [v.to_vkey() for v in self.log_verifiers],
            "receipt_keys": [k.to_json() for k in self.receipt_keys],
            "hpke_recipient": self.hpke_recipient.to_json(),
        }
        if self.log_key_versions:
            doc["log_key_versions"] = [[v.to_vkey() for v in s] for s in self.log_key_versions]
        if isinstance(self.witness_policy, Quorum):
            doc["witnesses"] = {
                "quorum": self.witness_policy.threshold,
                "keys": [w.to_vkey() for w in self.witness_policy.witnesses],
            }
        if self.attestation is not None:
            doc["attestation"] = self.attestation
        return canonical_json(doc)

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
            receipt_keys=tuple(ReceiptVerifyKey.from_json(k) for k in rkeys),
            hpke_recipient=HPKERecipientKey.from_json(doc.get("hpke_recipient")),
            witness_policy=_witness_policy(doc.get("witnesses")),
            log_key_versions=_log_key_versions(doc.get("log_key_versions")),
            attestation=_attestation(doc.get("attestation")),
        )


def _attestation(value: object) -> dict[str, Any] | None:
    """The ``attestation`` member: absent, or an object (checked where it is used)."""
    if value is not None and not isinstance(value, dict):
        raise FormatError("trust bundle: attestation must be an object")
    return value


def _log_key_versions(value: object) -> tuple[tuple[NoteVerifier, ...], ...]:
    """The ``log_key_versions`` member: absent, or a list of non-empty lists of vkeys."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise FormatError("trust bundle: log_key_versions must be a non-empty list")
    versions = []
    for item in value:
        if not isinstance(item, list) or not item or not all(isinstance(v, str) for v in item):
            raise FormatError("trust bundle: each log key version is a list of verifier keys")
        versions.append(tuple(NoteVerifier.from_vkey(v) for v in item))
    return tuple(versions)


def _witness_policy(value: object) -> WitnessPolicy:
    """The ``witnesses`` member: absent (no witnesses) or ``{"quorum": k, "keys": [vkey...]}``."""
    if value is None:
        return UnsafeNoWitnesses()
    if not isinstance(value, dict):
        raise FormatError("trust bundle: witnesses must be an object")
    quorum, keys = value.get("quorum"), value.get("keys")
    if type(quorum) is not int or not isinstance(keys, list) or not keys:
        raise FormatError("trust bundle: witnesses need an integer quorum and a list of keys")
    if not all(isinstance(k, str) for k in keys):
        raise FormatError("trust bundle: witness keys must be verifier key strings")
    try:
        return Quorum(threshold=quorum, witnesses=tuple(NoteVerifier.from_vkey(k) for k in keys))
    except InputError as exc:
        raise FormatError(f"trust bundle: {exc}") from None
