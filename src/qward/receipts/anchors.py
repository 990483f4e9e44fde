"""Anchor proofs in evidence bundles: which anchors travel with a bundle, and how they verify.

The core logs every anchor as a ``qward/anchor/v1`` entry holding the anchored signed checkpoint
note and the ledger's ``AnchorProof``. A bundle carries such entries as ordinary items (each with
its inclusion proof) and, in its ``anchors`` section, one consistency proof per anchor entry from
the anchored checkpoint to the bundle's checkpoint::

    "anchors": [{"index": 41, "consistency_proof": ["<base64>", ...]}]

Offline, each anchor entry must (1) hold a proof whose digest is ``anchor_digest`` of its note,
(2) hold a note signed by the pinned log keys, of the pinned origin, whose size and root are the
entry's, and (3) have a checkpoint the bundle's checkpoint is consistent with. With ledgers to ask
(``Anchor`` plug-ins, e.g. ``EthereumAnchor`` against a node), (4) the proof is checked on the
ledger too. Bundles made before anchoring have no ``anchors`` section and no anchor entries.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qward.anchoring.base import (
    Anchor,
    AnchoredTime,
    AnchorProof,
    check_proof_subject,
    verify_anchor,
)
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, ProofError, QwardError, VerificationError
from qward.receipts.entries import ANCHOR_ENTRY
from qward.receipts.trust import TrustBundle
from qward.tlog.backend import LogBackend
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.merkle import verify_consistency
from qward.tlog.note import open_note_by_any_set

__all__ = ["AnchorCheck", "anchor_section", "select_anchors", "verify_bundle_anchors"]

_ENTRY_KEYS = frozenset({"type", "origin", "size", "root_hash", "note", "proof", "at"})
_MARKER = b'"type":"qward/anchor/v1"'


@dataclass(frozen=True, kw_only=True)
class AnchorCheck:
    """One anchor in a bundle that verified."""

    index: int
    checkpoint_size: int
    kind: str
    #: The ledger's verdict when one was asked (``--rpc-url``); ``None`` when checked offline.
    ledger: AnchoredTime | None


def _anchored_sizes(store: LogBackend, size: int) -> list[tuple[int, int]]:
    """``(entry index, anchored checkpoint size)`` of every anchor entry in the first ``size``."""
    found = []
    for index, entry, _ in store.entries_with_leaf_hashes():
        if index >= size:
            break
        if _MARKER in entry:
            doc = json.loads(entry)
            if doc.get("type") == ANCHOR_ENTRY and type(doc.get("size")) is int:
                found.append((index, doc["size"]))
    return found


def select_anchors(store: LogBackend, size: int, indices: Sequence[int]) -> list[int]:
    """The anchor entries a bundle of ``indices`` under a checkpoint of ``size`` should carry:
    for each entry, the earliest anchor whose checkpoint covers it (the earliest ledger time
    that entry is proved by); with no entry to cover, the newest anchor."""
    anchors = _anchored_sizes(store, size)
    if not anchors:
        return []
    if not indices:
        return [anchors[-1][0]]
    chosen = set()
    for wanted in indices:
        first = next((i for i, covered in anchors if covered > wanted), None)
        if first is not None:
            chosen.add(first)
    return sorted(chosen)


def anchor_section(store: LogBackend, size: int, anchor_indices: Sequence[int]) -> list[Any]:
    """The bundle's ``anchors`` section: a consistency proof from each anchored checkpoint."""
    section = []
    for index in anchor_indices:
        anchored = json.loads(store.entry(index))["size"]
        proof = store.consistency_proof(anchored, size)
        section.append({"index": index, "consistency_proof": [b64encode(h) for h in proof]})
    return section


def _consistency_proofs(doc: Mapping[str, Any]) -> dict[int, tuple[bytes, ...]]:
    section = doc.get("anchors", [])
    if not isinstance(section, list):
        raise FormatError("evidence bundle: 'anchors' must be a list")
    proofs: dict[int, tuple[bytes, ...]] = {}
    for item in section:
        index = item.get("index") if isinstance(item, dict) else None
        hashes = item.get("consistency_proof") if isinstance(item, dict) else None
        if type(index) is not int or not isinstance(hashes, list) or index in proofs:
            raise FormatError(
                "evidence bundle: each 'anchors' item needs a unique index and a list"
            )
        proofs[index] = tuple(b64decode(h, what="anchor consistency proof") for h in hashes)
    return proofs


def _anchor_items(doc: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The bundle's items that are anchor entries (their inclusion was checked by the caller)."""
    found = []
    for item in doc["items"]:
        entry = b64decode(item.get("entry"), what="evidence entry")
        if _MARKER not in entry:
            continue
        parsed = parse_canonical_json(entry, what=f"log entry {item.get('index')}")
        if parsed.get("type") == ANCHOR_ENTRY:
            found.append((item["index"], parsed))
    return found


def verify_bundle_anchors(
    doc: Mapping[str, Any],
    checkpoint: Checkpoint,
    trust: TrustBundle,
    ledgers: Sequence[Anchor] = (),
) -> tuple[AnchorCheck, ...]:
    """Check every anchor entry in a parsed bundle ``doc`` against its bundle ``checkpoint``
    (already verified) and the pinned ``trust``; raise naming the check and the entry."""
    proofs = _consistency_proofs(doc)
    items = _anchor_items(doc)
    unmatched = sorted(set(proofs) - {index for index, _ in items})
    if unmatched:
        raise FormatError(f"evidence bundle: 'anchors' names entry {unmatched[0]}, not an anchor")
    checks = []
    for index, entry in items:
        if index not in proofs:
            raise FormatError(f"anchor in log entry {index}: the bundle has no consistency proof")
        checks.append(_verify_one(index, entry, proofs[index], checkpoint, trust, ledgers))
    return tuple(checks)


def _named(exc: QwardError, check: str) -> QwardError:
    """``exc`` again, its message prefixed with the check that failed (same kind of error)."""
    kind = next(
        k for k in (FormatError, ProofError, VerificationError, QwardError) if isinstance(exc, k)
    )
    return kind(f"{check}: {exc}")


def _verify_one(
    index: int,
    entry: dict[str, Any],
    consistency: tuple[bytes, ...],
    checkpoint: Checkpoint,
    trust: TrustBundle,
    ledgers: Sequence[Anchor],
) -> AnchorCheck:
    where = f"anchor in log entry {index}"
    if set(entry) != _ENTRY_KEYS or not isinstance(entry["note"], str):
        raise FormatError(f"{where}: the entry does not have the qward/anchor/v1 fields")
    note = entry["note"].encode("utf-8")
    proof = AnchorProof.from_json(canonical_json(entry["proof"]))
    try:
        check_proof_subject(note, proof, kind=proof.kind)
    except QwardError as exc:
        raise _named(exc, f"{where}: the anchor proof does not bind the anchored note") from None
    anchored = _anchored_checkpoint(where, note, entry, trust)
    try:
        verify_consistency(
            old_size=anchored.size,
            new_size=checkpoint.size,
            old_root=anchored.root_hash,
            new_root=checkpoint.root_hash,
            proof=consistency,
        )
    except QwardError as exc:
        raise _named(
            exc, f"{where}: the bundle's checkpoint is not consistent with the anchored one"
        ) from None
    ledger = None
    if ledgers:
        try:
            ledger = verify_anchor(note, proof, anchors=ledgers)
        except QwardError as exc:
            raise _named(exc, f"{where}: the ledger does not confirm the anchor") from None
    return AnchorCheck(index=index, checkpoint_size=anchored.size, kind=proof.kind, ledger=ledger)


def _anchored_checkpoint(
    where: str, note: bytes, entry: dict[str, Any], trust: TrustBundle
) -> Checkpoint:
    """The anchored note, signed by the pinned log keys, of the pinned log, as the entry says."""
    try:
        text, _ = open_note_by_any_set(note, trust.log_key_sets)
    except QwardError as exc:
        raise _named(
            exc, f"{where}: the anchored checkpoint is not signed by the pinned log keys"
        ) from None
    anchored = Checkpoint.from_body(text)
    if anchored.origin != trust.origin or entry["origin"] != anchored.origin:
        raise VerificationError(f"{where}: the anchored checkpoint is not of the pinned log")
    root = b64decode(entry["root_hash"], what=f"{where}: root_hash")
    if entry["size"] != anchored.size or not hmac.compare_digest(root, anchored.root_hash):
        raise VerificationError(f"{where}: the entry's size or root is not the anchored note's")
    return anchored
