"""The core's side of replay verdicts: which receipts it accepts to replay, and the entry it logs.

A receipt from this core's own log is checked against the core's own keys. A receipt from another
log (an independent replay) comes with that log's trust bundle, which the caller pins; the verdict
entry names the receipt by its issuing log, index and body digest, so a third party who pins the
issuer's keys can tell which receipt was reproduced.
"""

from __future__ import annotations

from typing import Any

from qward.errors import InputError
from qward.receipts.entries import replay_verdict_entry
from qward.receipts.replay_evidence import receipt_reference
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import VerifiedReceipt, Verifier

__all__ = ["replay_verdict_record", "verified_receipt"]


def verified_receipt(header: dict[str, Any], own: Verifier) -> VerifiedReceipt:
    """The header's receipt, verified against the issuing log's pins (``issuer_trust``, when
    the receipt comes from another log) or this core's own."""
    receipt = header.get("receipt")
    if not isinstance(receipt, str):
        raise InputError("replay needs the receipt")
    issuer = header.get("issuer_trust")
    if issuer is None:
        return own.verify(receipt.encode("utf-8"))
    if not isinstance(issuer, str):
        raise InputError("issuer_trust must be a trust bundle (JSON text)")
    return Verifier(trust=TrustBundle.from_bytes(issuer.encode("utf-8"))).verify(
        receipt.encode("utf-8")
    )


def _environment(runtime: dict[str, Any], output_sha256: str) -> dict[str, Any]:
    return {
        "platform_class": runtime.get("platform_class"),
        "environment_sha256": runtime.get("libraries", {}).get("environment_sha256"),
        "output_sha256": output_sha256,
    }


def replay_verdict_record(
    verified: VerifiedReceipt,
    *,
    log_origin: str,
    attestation: dict[str, Any] | None,
    replay_runtime: dict[str, Any],
    output_sha256: str,
    verdict: str,
    same_environment: bool,
    max_abs: float,
    max_rel: float,
    detail: str,
    request_id: str,
    at: str,
) -> bytes:
    """The ``qward/replay-verdict/v1`` entry for a replay this core ran."""
    body = verified.body
    return replay_verdict_entry(
        receipt=receipt_reference(verified.bundle),
        original=_environment(body["runtime"], str(body["output"]["sha256"])),
        replay={
            **_environment(replay_runtime, output_sha256),
            "log_origin": log_origin,
            "attestation": attestation,
        },
        verdict=verdict,
        same_environment=same_environment,
        max_abs=max_abs,
        max_rel=max_rel,
        detail=detail,
        request_id=request_id,
        at=at,
    )
