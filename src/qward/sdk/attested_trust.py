"""Pinning a remote core's keys only after its hardware evidence is appraised.

``fetch_attested_trust`` sends a fresh nonce to ``POST /v1/attestation``, appraises the evidence
that comes back against the client's ``AppraisalPolicy`` (vendor chain, key binding, nonce,
debug, TCB, age, a published release) and returns the trust bundle with the appraisal result in
its ``attestation`` member. ``require_attested`` is what sealing and uploading call: a bundle
without an affirming appraisal is refused, unless the caller explicitly accepts software-only
isolation (and then it is stamped in the bundle and warned about on every use).
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import UTC, datetime

import httpx

from qward.attestation.appraisal import AFFIRMING, SOFTWARE_ONLY_STATUS, AppraisalPolicy, appraise
from qward.attestation.response import AttestationResponse
from qward.attestation.verifiers import verifiers_for
from qward.errors import AttestationError, CoreUnavailableError, InputError
from qward.receipts.trust import TrustBundle

__all__ = ["appraise_response", "fetch_attested_trust", "require_attested"]

_NONCE_BYTES = 32


def fetch_attested_trust(
    url: str,
    *,
    policy: AppraisalPolicy,
    token: str,
    allow_software_only: bool = False,
    timeout: float = 30.0,
) -> TrustBundle:
    """Fetch, appraise and return ``url``'s trust bundle; raises ``AttestationError`` naming
    the failed check when the evidence does not satisfy ``policy``."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/attestation",
            json={"nonce": nonce.hex()},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx.TransportError as exc:
        raise CoreUnavailableError(f"cannot reach {url} ({type(exc).__name__})") from None
    if response.status_code in (401, 403):
        raise InputError(f"not authorised ({response.status_code}) to fetch attestation")
    if response.status_code != 200:
        raise CoreUnavailableError(f"{url} answered {response.status_code} to /v1/attestation")
    return appraise_response(
        response.content,
        policy=policy,
        nonce=nonce,
        now=datetime.now(UTC),
        allow_software_only=allow_software_only,
    )


def appraise_response(
    data: bytes,
    *,
    policy: AppraisalPolicy,
    nonce: bytes,
    now: datetime,
    allow_software_only: bool = False,
) -> TrustBundle:
    """Appraise an ``AttestationResponse`` for ``nonce``; the trust bundle it carries, stamped
    with the result."""
    answer = AttestationResponse.from_bytes(data)
    if answer.nonce != nonce:
        raise AttestationError("the core answered for another nonce", check="nonce")
    trust = TrustBundle.from_bytes(answer.trust)
    if trust.manifest_bytes() != answer.trust:
        raise AttestationError("the trust bundle is not in canonical form", check="manifest")
    if allow_software_only:
        policy = replace(policy, unsafe_allow_software_only=True)
    result = appraise(
        answer.evidence,
        policy=policy,
        verifiers=verifiers_for(policy),
        manifest=answer.trust,
        nonce=nonce,
        now=now,
        collected_at=answer.collected_at,
    )
    record = {**result.to_json(), "core_log_index": answer.log_index}
    return replace(trust, attestation=record)


def require_attested(trust: TrustBundle, *, allow_software_only: bool = False) -> str:
    """Return the appraisal status if ``trust`` carries an affirming appraisal or the caller
    allows software-only isolation; otherwise raise ``AttestationError``. The caller warns."""
    status = str((trust.attestation or {}).get("status", "none"))
    if status == AFFIRMING or allow_software_only:
        return status
    if status == SOFTWARE_ONLY_STATUS:
        raise AttestationError(
            "the trust bundle's core has software-only isolation; "
            "pass --allow-software-only to seal to it anyway",
            check="software-only",
        )
    raise AttestationError(
        "the trust bundle carries no hardware attestation; "
        "pin it with `qward trust fetch --url URL --policy POLICY` first",
        check="unattested-trust",
    )
