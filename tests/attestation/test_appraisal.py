"""Appraisal policy checks, in order, each failure naming its check.

The vendor-signature verifiers are tested against real evidence in their own test modules. Here a
``_ClaimsVerifier`` hands appraisal the claims a test wants, so each policy check (binding,
nonce, debug, TCB, age, release) can be driven on its own; it is the only stand-in, and it stands
for the signature check only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qward.attestation.appraisal import (
    AFFIRMING,
    SOFTWARE_ONLY_STATUS,
    AppraisalPolicy,
    AttestationResult,
    appraise,
)
from qward.attestation.binding import expected_field, report_data
from qward.attestation.evidence import Claims, Evidence
from qward.attestation.release import ReleaseEntry
from qward.encoding import canonical_json
from qward.errors import AttestationError, FormatError, InputError
from qward.release.log import ReleaseLog

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MANIFEST = b'{"format":"qward/trust/v1","origin":"test"}'
NONCE = bytes(range(32))
GOOD_PCR = "11" * 32


@dataclass
class _ClaimsVerifier:
    """Returns fixed claims for evidence of its format (stands in for the signature check)."""

    claims: Claims
    format: str = "tpm"

    def verify(self, evidence: Evidence, *, now: datetime) -> Claims:
        return self.claims


def _claims(**changes: object) -> Claims:
    base = Claims(
        format="tpm",
        measurements={"sha256:23": GOOD_PCR, "sha256:0": "00" * 32},
        report_data=expected_field("tpm", report_data(MANIFEST, NONCE)),
        debug=False,
        tcb={"firmware_version": 7},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> AppraisalPolicy:
    log = ReleaseLog.create(tmp_path_factory.mktemp("rel") / "log", origin="example.com/rel")
    log.publish(
        ReleaseEntry(
            version="0.9", core_sha256="aa" * 32, platforms={"tpm": {"sha256:23": "22" * 32}}
        )
    )
    log.publish(
        ReleaseEntry(
            version="1.0", core_sha256="bb" * 32, platforms={"tpm": {"sha256:23": GOOD_PCR}}
        )
    )
    return AppraisalPolicy(
        release_log_origin=log.origin,
        release_log_keys=(log.verifiers,),
        releases=log.statements(),
        min_tcb={"tpm": {"firmware_version": 5}},
    )


def _appraise(policy: AppraisalPolicy, claims: Claims, **kw: object) -> AttestationResult:
    args: dict[str, object] = {
        "policy": policy,
        "verifiers": {"tpm": _ClaimsVerifier(claims)},
        "manifest": MANIFEST,
        "nonce": NONCE,
        "now": NOW,
    }
    args.update(kw)
    return appraise(Evidence(format="tpm", report=b"quote"), **args)  # type: ignore[arg-type]


def _refused(policy: AppraisalPolicy, claims: Claims, **kw: object) -> str:
    with pytest.raises(AttestationError) as caught:
        _appraise(policy, claims, **kw)
    return caught.value.check


def test_matching_evidence_is_affirmed_with_its_release(policy: AppraisalPolicy) -> None:
    result = _appraise(policy, _claims())
    assert result.status == AFFIRMING and result.accepted_hardware
    assert result.release is not None and result.release["version"] == "1.0"
    assert result.release["log_index"] == 1
    assert result.measurements["sha256:23"] == GOOD_PCR
    assert result.report_data == report_data(MANIFEST, NONCE).hex()
    assert result.policy_sha256 == policy.digest()
    assert AttestationResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_each_policy_check_refuses_by_name(policy: AppraisalPolicy) -> None:
    other_keys = expected_field("tpm", report_data(b"{}", NONCE))
    other_nonce = expected_field("tpm", report_data(MANIFEST, bytes(32)))
    assert _refused(policy, _claims(report_data=other_keys)) == "report-data"
    assert _refused(policy, _claims(report_data=other_nonce)) == "report-data"
    assert _refused(policy, _claims(), seen_nonces=[NONCE]) == "nonce"
    assert _refused(policy, _claims(debug=True)) == "debug-policy"
    assert _refused(policy, _claims(tcb={"firmware_version": 4})) == "min-tcb"
    assert _refused(policy, _claims(tcb={})) == "min-tcb"
    stale = NOW - timedelta(minutes=11)
    assert _refused(policy, _claims(issued_at=stale)) == "evidence-age"
    assert _refused(policy, _claims(), collected_at=stale) == "evidence-age"
    assert _refused(policy, _claims(issued_at=NOW + timedelta(hours=1))) == "evidence-age"
    changed = {"sha256:23": "33" * 32}
    assert _refused(policy, _claims(measurements=changed)) == "release-measurements"


def test_a_refused_release_names_what_differs(policy: AppraisalPolicy) -> None:
    with pytest.raises(AttestationError, match=r"1\.0: sha256:23 differ"):
        _appraise(policy, _claims(measurements={"sha256:23": "33" * 32}))


def test_debug_is_accepted_only_when_the_policy_says_so(policy: AppraisalPolicy) -> None:
    assert _appraise(replace(policy, allow_debug=True), _claims(debug=True)).status == AFFIRMING


def test_software_only_evidence_needs_the_unsafe_switch(policy: AppraisalPolicy) -> None:
    evidence = Evidence(format="software-only")
    args = {"verifiers": {}, "manifest": MANIFEST, "nonce": NONCE, "now": NOW}
    with pytest.raises(AttestationError) as caught:
        appraise(evidence, policy=policy, **args)  # type: ignore[arg-type]
    assert caught.value.check == "software-only"
    unsafe = replace(policy, unsafe_allow_software_only=True)
    result = appraise(evidence, policy=unsafe, **args)  # type: ignore[arg-type]
    assert result.status == SOFTWARE_ONLY_STATUS and not result.accepted_hardware
    assert result.release is None and result.measurements == {}


def test_a_format_the_policy_does_not_list_is_refused(policy: AppraisalPolicy) -> None:
    only_snp = replace(policy, formats=frozenset({"sev-snp"}))
    assert _refused(only_snp, _claims()) == "format"


def test_a_release_statement_from_another_log_is_refused(
    policy: AppraisalPolicy, tmp_path: Path
) -> None:
    stranger = ReleaseLog.create(tmp_path / "s", origin="evil.example/rel")
    forged = stranger.publish(
        ReleaseEntry(
            version="6.6", core_sha256="cc" * 32, platforms={"tpm": {"sha256:23": "33" * 32}}
        )
    )
    mixed = replace(policy, releases=(*policy.releases, forged))
    assert _refused(mixed, _claims(measurements={"sha256:23": "33" * 32})) == "release-log"


def test_policy_files_round_trip_and_reject_garbage(policy: AppraisalPolicy) -> None:
    again = AppraisalPolicy.from_bytes(policy.to_bytes())
    assert again.to_bytes() == policy.to_bytes() and again.digest() == policy.digest()
    doc = json.loads(policy.to_bytes())
    for key, bad in [("allow_debug", "yes"), ("max_evidence_age_seconds", 0), ("min_tcb", [])]:
        broken = {**doc, key: bad}
        with pytest.raises(FormatError, match=key):
            AppraisalPolicy.from_bytes(canonical_json(broken))
    with pytest.raises(FormatError):
        AppraisalPolicy.from_bytes(b"[]")


@given(st.binary(max_size=80))
def test_nonce_lengths_outside_the_binding_bounds_are_input_errors(nonce: bytes) -> None:
    if 16 <= len(nonce) <= 64:
        assert len(report_data(MANIFEST, nonce)) == 64
    else:
        with pytest.raises(InputError, match="nonce"):
            report_data(MANIFEST, nonce)
