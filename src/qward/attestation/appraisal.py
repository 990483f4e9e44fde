"""Appraisal: does verified evidence show a release we accept, bound to these keys and this nonce?

An ``AppraisalPolicy`` names the release log (origin and checkpoint keys), the release statements
whose measurements are allowed, a minimum TCB per format, whether debug is allowed (never by
default), the maximum evidence age and which formats are acceptable. ``appraise`` runs the
format's verifier and then the policy's checks, in order, and either raises ``AttestationError``
naming the check that failed or returns an ``AttestationResult``: EAR-style claims (evidence
format, measurements, TCB, the matching release and the verdict) that a receipt or a pinned trust
bundle carries, so an auditor can recheck them offline.

Software-only evidence (no TEE, no TPM) is refused unless the policy was built with
``unsafe_allow_software_only``; the result then says ``software-only``, never ``affirming``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from qward.attestation.binding import expected_field, report_data
from qward.attestation.evidence import SOFTWARE_ONLY, Claims, Evidence, EvidenceVerifier
from qward.attestation.release import ReleaseStatement, VerifiedRelease
from qward.encoding import canonical_json, parse_canonical_json, sha256_hex
from qward.errors import AttestationError, FormatError
from qward.tlog.note import NoteVerifier

__all__ = [
    "AFFIRMING",
    "POLICY_FORMAT",
    "RESULT_FORMAT",
    "SOFTWARE_ONLY_STATUS",
    "AppraisalPolicy",
    "AttestationResult",
    "appraise",
]

POLICY_FORMAT = "qward/appraisal-policy/v1"
RESULT_FORMAT = "qward/attestation-result/v1"
AFFIRMING = "affirming"
SOFTWARE_ONLY_STATUS = "software-only"
_MAX_POLICY_BYTES = 1024 * 1024
_DEFAULT_MAX_AGE = timedelta(minutes=10)


@dataclass(frozen=True, kw_only=True)
class AppraisalPolicy:
    """What evidence must show to be accepted."""

    release_log_origin: str
    release_log_keys: tuple[tuple[NoteVerifier, ...], ...]
    releases: tuple[ReleaseStatement, ...]
    min_tcb: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    formats: frozenset[str] = frozenset({"sev-snp", "tdx", "nitro", "tpm"})
    max_age: timedelta = _DEFAULT_MAX_AGE
    allow_debug: bool = False
    #: PEM roots for TPM attestation-key certificates (a cloud provider's or the operator's CA).
    tpm_roots: tuple[bytes, ...] = ()
    #: Accept evidence that says no TEE or TPM is present. Named so no one turns it on lightly.
    unsafe_allow_software_only: bool = False

    def to_json(self) -> dict[str, Any]:
        """The policy as a JSON object (``qward/appraisal-policy/v1``)."""
        return {
            "format": POLICY_FORMAT,
            "release_log": {
                "origin": self.release_log_origin,
                "key_sets": [[v.to_vkey() for v in s] for s in self.release_log_keys],
            },
            "releases": [r.to_json() for r in self.releases],
            "min_tcb": {k: dict(v) for k, v in sorted(self.min_tcb.items())},
            "formats": sorted(self.formats),
            "max_evidence_age_seconds": int(self.max_age.total_seconds()),
            "allow_debug": self.allow_debug,
            "tpm_roots": [r.decode("ascii") for r in self.tpm_roots],
            "unsafe_allow_software_only": self.unsafe_allow_software_only,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON encoding."""
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> AppraisalPolicy:
        """Strictly parse a policy file, through a size limit."""
        if len(data) > _MAX_POLICY_BYTES:
            raise FormatError("appraisal policy is over the size limit")
        doc = parse_canonical_json(data, what="appraisal policy")
        if doc.get("format") != POLICY_FORMAT:
            raise FormatError(f"appraisal policy: unsupported format {doc.get('format')!r}")
        log = doc.get("release_log")
        if not isinstance(log, dict) or not isinstance(log.get("origin"), str):
            raise FormatError("appraisal policy: release_log needs an origin and key_sets")
        return cls(
            release_log_origin=str(log["origin"]),
            release_log_keys=_key_sets(log.get("key_sets")),
            releases=tuple(ReleaseStatement.from_json(r) for r in _list(doc, "releases")),
            min_tcb=_min_tcb(doc.get("min_tcb", {})),
            formats=frozenset(str(f) for f in _list(doc, "formats")),
            max_age=timedelta(seconds=_int(doc, "max_evidence_age_seconds", 600)),
            allow_debug=_bool(doc, "allow_debug"),
            tpm_roots=tuple(str(r).encode("ascii") for r in _list(doc, "tpm_roots", [])),
            unsafe_allow_software_only=_bool(doc, "unsafe_allow_software_only"),
        )

    def verified_releases(self) -> tuple[VerifiedRelease, ...]:
        """Every release statement, proved against the pinned release log."""
        return tuple(
            r.verify(origin=self.release_log_origin, key_sets=self.release_log_keys)
            for r in self.releases
        )

    def digest(self) -> str:
        """SHA-256 of the canonical policy: which policy a result was appraised under."""
        return sha256_hex(self.to_bytes())


@dataclass(frozen=True, kw_only=True)
class AttestationResult:
    """The verdict on one piece of evidence, in a form receipts and trust bundles carry."""

    status: str
    evidence_format: str
    evidence_sha256: str
    measurements: dict[str, str]
    tcb: dict[str, int]
    report_data: str
    nonce: str
    appraised_at: str
    policy_sha256: str
    release: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """EAR-style claims (draft-ietf-rats-ear): status, the evidence's claims and the release."""
        return {
            "format": RESULT_FORMAT,
            "status": self.status,
            "evidence_format": self.evidence_format,
            "evidence_sha256": self.evidence_sha256,
            "measurements": self.measurements,
            "tcb": self.tcb,
            "report_data": self.report_data,
            "nonce": self.nonce,
            "appraised_at": self.appraised_at,
            "policy_sha256": self.policy_sha256,
            "release": self.release,
        }

    @classmethod
    def from_json(cls, doc: object) -> AttestationResult:
        """Strictly parse a result object."""
        if not isinstance(doc, dict) or doc.get("format") != RESULT_FORMAT:
            raise FormatError("attestation result: not a qward/attestation-result/v1 object")
        strings = ("status", "evidence_format", "evidence_sha256", "report_data", "nonce")
        more = ("appraised_at", "policy_sha256")
        if any(not isinstance(doc.get(k), str) for k in strings + more):
            raise FormatError("attestation result: a string member is missing")
        measurements, tcb, release = doc.get("measurements"), doc.get("tcb"), doc.get("release")
        if not isinstance(measurements, dict) or not isinstance(tcb, dict):
            raise FormatError("attestation result: measurements and tcb must be objects")
        if release is not None and not isinstance(release, dict):
            raise FormatError("attestation result: release must be an object or null")
        return cls(
            **{k: str(doc[k]) for k in strings + more},
            measurements={str(k): str(v) for k, v in measurements.items()},
            tcb={str(k): int(v) for k, v in tcb.items()},
            release=release,
        )

    @property
    def accepted_hardware(self) -> bool:
        """True when hardware evidence was appraised as affirming."""
        return self.status == AFFIRMING


def appraise(
    evidence: Evidence,
    *,
    policy: AppraisalPolicy,
    verifiers: Mapping[str, EvidenceVerifier],
    manifest: bytes,
    nonce: bytes,
    now: datetime,
    collected_at: datetime | None = None,
    seen_nonces: Iterable[bytes] = (),
) -> AttestationResult:
    """Appraise ``evidence`` that should bind ``manifest`` (the core's canonical trust bundle)
    and the client's fresh ``nonce``, under ``policy`` at ``now``.

    1. The nonce is fresh: not one this client has used before.
    2. Software-only evidence is accepted only under ``unsafe_allow_software_only``.
    3. The format is one the policy allows, and its verifier accepts the evidence.
    4. Debug is off, unless the policy allows it.
    5. Every TCB component is at least the policy's minimum.
    6. REPORT_DATA (user_data, qualifying data) is the binding of ``manifest`` and ``nonce``.
    7. The evidence is not older than the policy's maximum age.
    8. The measurements are those of a release proved to be in the release log.
    """
    if nonce in set(seen_nonces):
        raise AttestationError(
            "this nonce was used before; evidence may be replayed", check="nonce"
        )
    binding = report_data(manifest, nonce)
    if evidence.format == SOFTWARE_ONLY:
        if not policy.unsafe_allow_software_only:
            raise AttestationError(
                "the core has no TEE or TPM evidence (software-only)", check="software-only"
            )
        return _result(
            SOFTWARE_ONLY_STATUS,
            evidence,
            None,
            binding=binding,
            nonce=nonce,
            now=now,
            policy=policy,
            release=None,
        )
    if evidence.format not in policy.formats or evidence.format not in verifiers:
        raise AttestationError(
            f"evidence format {evidence.format!r} is not allowed by the policy", check="format"
        )
    claims = verifiers[evidence.format].verify(evidence, now=now)
    if claims.debug and not policy.allow_debug:
        raise AttestationError("the platform reports debug mode", check="debug-policy")
    _check_tcb(claims, policy.min_tcb.get(claims.format, {}))
    _check_binding(claims, binding, nonce)
    _check_age(claims.issued_at or collected_at, now, policy.max_age)
    release = _matching_release(claims, policy.verified_releases())
    return _result(
        AFFIRMING,
        evidence,
        claims,
        binding=binding,
        nonce=nonce,
        now=now,
        policy=policy,
        release=release,
    )


def _check_binding(claims: Claims, binding: bytes, nonce: bytes) -> None:
    if claims.report_data != expected_field(claims.format, binding):
        raise AttestationError(
            "the evidence does not bind these keys and this nonce", check="report-data"
        )
    if claims.nonce is not None and claims.nonce != nonce:
        raise AttestationError("the evidence carries another nonce", check="nonce")


def _check_tcb(claims: Claims, minimum: Mapping[str, int]) -> None:
    for name, least in sorted(minimum.items()):
        have = claims.tcb.get(name)
        if have is None or have < least:
            raise AttestationError(
                f"TCB component {name} is {have}, below the policy's minimum {least}",
                check="min-tcb",
            )


def _check_age(issued: datetime | None, now: datetime, max_age: timedelta) -> None:
    if issued is None:
        return
    if now - issued > max_age or issued - now > timedelta(minutes=5):
        raise AttestationError(
            f"evidence from {issued.isoformat()} is outside the policy's {max_age} window",
            check="evidence-age",
        )


def _matching_release(claims: Claims, releases: tuple[VerifiedRelease, ...]) -> VerifiedRelease:
    """The first release whose reference values for this format all equal the claims'."""
    differences = []
    for release in releases:
        reference = release.entry.platforms.get(claims.format)
        if not reference:
            continue
        wrong = sorted(k for k, v in reference.items() if claims.measurements.get(k) != v)
        if not wrong:
            return release
        differences.append(f"{release.entry.version}: {', '.join(wrong)} differ")
    detail = "; ".join(differences) or f"no release lists {claims.format} measurements"
    raise AttestationError(
        f"the measurements match no published release ({detail})", check="release-measurements"
    )


def _result(
    status: str,
    evidence: Evidence,
    claims: Claims | None,
    *,
    binding: bytes,
    nonce: bytes,
    now: datetime,
    policy: AppraisalPolicy,
    release: VerifiedRelease | None,
) -> AttestationResult:
    return AttestationResult(
        status=status,
        evidence_format=evidence.format,
        evidence_sha256=hashlib.sha256(evidence.to_bytes()).hexdigest(),
        measurements=dict(claims.measurements) if claims else {},
        tcb=dict(claims.tcb) if claims else {},
        report_data=binding.hex(),
        nonce=nonce.hex(),
        appraised_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        policy_sha256=policy.digest(),
        release=None
        if release is None
        else {
            "version": release.entry.version,
            "core_sha256": release.entry.core_sha256,
            "log_origin": release.origin,
            "log_index": release.index,
            "entry_sha256": release.entry_sha256,
        },
    )


def _key_sets(value: object) -> tuple[tuple[NoteVerifier, ...], ...]:
    if not isinstance(value, list) or not value:
        raise FormatError("appraisal policy: release_log.key_sets must be a non-empty list")
    sets = []
    for item in value:
        if not isinstance(item, list) or not item or not all(isinstance(v, str) for v in item):
            raise FormatError("appraisal policy: each key set is a list of verifier keys")
        sets.append(tuple(NoteVerifier.from_vkey(v) for v in item))
    return tuple(sets)


def _list(doc: Mapping[str, Any], key: str, default: list[Any] | None = None) -> list[Any]:
    value = doc.get(key, default)
    if not isinstance(value, list):
        raise FormatError(f"appraisal policy: {key} must be a list")
    return value


def _int(doc: Mapping[str, Any], key: str, default: int) -> int:
    value = doc.get(key, default)
    if type(value) is not int or value <= 0:
        raise FormatError(f"appraisal policy: {key} must be a positive integer")
    return value


def _bool(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise FormatError(f"appraisal policy: {key} must be true or false")
    return value


def _min_tcb(value: object) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict):
        raise FormatError("appraisal policy: min_tcb must be an object")
    out: dict[str, dict[str, int]] = {}
    for fmt, parts in value.items():
        if not isinstance(parts, dict) or any(type(v) is not int for v in parts.values()):
            raise FormatError(f"appraisal policy: min_tcb.{fmt} must map names to integers")
        out[str(fmt)] = {str(k): int(v) for k, v in parts.items()}
    return out
