"""Transparency-log entry types. Every entry is canonical JSON with a ``type`` label."""

from __future__ import annotations

from typing import Any

from qward.crypto.signatures import ReceiptSignature
from qward.encoding import canonical_json

__all__ = [
    "ACCESS_ENTRY",
    "ADMIN_ENTRY",
    "ANCHOR_ENTRY",
    "ATTESTATION_ENTRY",
    "CHECKPOINT_RECEIPT_ENTRY",
    "ERASURE_ENTRY",
    "KEY_USE_ENTRY",
    "RECEIPT_ENTRY",
    "REPLAY_ENTRY",
    "REPLAY_VERDICT_ENTRY",
    "access_entry",
    "admin_entry",
    "anchor_entry",
    "attestation_entry",
    "erasure_entry",
    "key_use_entry",
    "receipt_entry",
    "replay_entry",
    "replay_verdict_entry",
]

RECEIPT_ENTRY = "qward/receipt/v1"
#: A receipt that no signature of its own covers: the checkpoint proving its entry signs it.
CHECKPOINT_RECEIPT_ENTRY = "qward/receipt/v2"
KEY_USE_ENTRY = "qward/key-use/v1"
ADMIN_ENTRY = "qward/admin/v1"
#: Before replay verdicts became evidence; still read from old logs.
REPLAY_ENTRY = "qward/replay/v1"
REPLAY_VERDICT_ENTRY = "qward/replay-verdict/v1"
ACCESS_ENTRY = "qward/access/v1"
ATTESTATION_ENTRY = "qward/attestation/v1"
ERASURE_ENTRY = "qward/erasure/v1"
#: A signed checkpoint anchored in a ledger, with the anchored note and the ledger's proof.
ANCHOR_ENTRY = "qward/anchor/v1"


def receipt_entry(body: dict[str, Any], signature: ReceiptSignature | None) -> bytes:
    """The log entry for a receipt: the receipt itself is what gets logged.

    With a signature it is a ``qward/receipt/v1`` entry; without one (a checkpoint-signed
    receipt) a ``qward/receipt/v2`` entry, which a distinct type keeps from being mistaken for a
    v1 entry whose signature was stripped.
    """
    if signature is None:
        return canonical_json({"type": CHECKPOINT_RECEIPT_ENTRY, "body": body})
    return canonical_json({"type": RECEIPT_ENTRY, "body": body, "signature": signature.to_json()})


def key_use_entry(
    *, key_id: str, purpose: str, object_sha256: str, request_id: str, at: str
) -> bytes:
    """A private-key use, logged before the key is used."""
    return canonical_json(
        {
            "type": KEY_USE_ENTRY,
            "key_id": key_id,
            "purpose": purpose,
            "object_sha256": object_sha256,
            "request_id": request_id,
            "at": at,
        }
    )


def admin_entry(*, action: str, at: str, details: dict[str, Any]) -> bytes:
    """An administrative event: keystore creation, model registration, process start/stop."""
    return canonical_json({"type": ADMIN_ENTRY, "action": action, "at": at, "details": details})


def replay_entry(
    *, receipt_id: str, request_id: str, verdict: str, output_sha256: str, at: str
) -> bytes:
    """A replay of an earlier receipt and its verdict."""
    return canonical_json(
        {
            "type": REPLAY_ENTRY,
            "receipt_id": receipt_id,
            "request_id": request_id,
            "verdict": verdict,
            "output_sha256": output_sha256,
            "at": at,
        }
    )


def replay_verdict_entry(
    *,
    receipt: dict[str, Any],
    original: dict[str, Any],
    replay: dict[str, Any],
    verdict: str,
    same_environment: bool,
    max_abs: float,
    max_rel: float,
    detail: str,
    request_id: str,
    at: str,
) -> bytes:
    """A replay's verdict as evidence: which receipt (by issuing log, index and body digest),
    where it ran first and where it was replayed, and how the outputs compared."""
    return canonical_json(
        {
            "type": REPLAY_VERDICT_ENTRY,
            "receipt": receipt,
            "original": original,
            "replay": replay,
            "verdict": verdict,
            "same_environment": same_environment,
            "independent": replay["log_origin"] != receipt["log_origin"],
            # Canonical JSON carries no floats: errors are written as decimal strings.
            "max_abs": format(max_abs, ".6e"),
            "max_rel": format(max_rel, ".6e"),
            "detail": detail,
            "request_id": request_id,
            "at": at,
        }
    )


def access_entry(
    *,
    token_id: str | dict[str, Any] | None,
    role: str | None,
    method: str,
    path: str,
    decision: str,
    at: str,
) -> bytes:
    """A call to the public API and the access decision, logged before the call runs. The token
    id may be a sealed field (``qward.crypto.erasable``) when callers are declared personal."""
    return canonical_json(
        {
            "type": ACCESS_ENTRY,
            "token_id": token_id,
            "role": role,
            "method": method,
            "path": path[:512],
            "decision": decision,
            "at": at,
        }
    )


def attestation_entry(
    *, evidence: dict[str, Any], nonce_sha256: str, manifest_sha256: str, purpose: str, at: str
) -> bytes:
    """Evidence the core produced, what it binds and why: logged before it is handed out."""
    return canonical_json(
        {
            "type": ATTESTATION_ENTRY,
            "purpose": purpose,
            "evidence": evidence,
            "nonce_sha256": nonce_sha256,
            "manifest_sha256": manifest_sha256,
            "at": at,
        }
    )


def erasure_entry(*, subject_key_id: str, at: str) -> bytes:
    """A data subject's key was deleted: fields sealed under ``subject_key_id`` are unreadable
    from now on (the subject is named only by that pseudonymous key id)."""
    return canonical_json({"type": ERASURE_ENTRY, "subject_key_id": subject_key_id, "at": at})


def anchor_entry(
    *, origin: str, size: int, root_hash: str, note: str, proof: dict[str, Any], at: str
) -> bytes:
    """A checkpoint the core anchored: the signed note itself and the ledger's anchor proof."""
    return canonical_json(
        {
            "type": ANCHOR_ENTRY,
            "origin": origin,
            "size": size,
            "root_hash": root_hash,
            "note": note,
            "proof": proof,
            "at": at,
        }
    )
