"""Which receipts were reproduced, and by whom: replay verdicts matched to the receipts they name.

A verdict logged in this log about one of its own receipts is the operator re-checking its own
work; a verdict from another log (a verdict document another core handed out, verified against
that log's pinned keys) is an independent reproduction. Legacy ``qward/replay/v1`` entries, from
before verdicts named their receipt across logs, are listed as this log's own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from qward.encoding import canonical_json
from qward.errors import VerificationError
from qward.receipts.entries import (
    CHECKPOINT_RECEIPT_ENTRY,
    RECEIPT_ENTRY,
    REPLAY_ENTRY,
    REPLAY_VERDICT_ENTRY,
)
from qward.receipts.replay_evidence import VerifiedVerdict
from qward.tlog.backend import LogBackend

__all__ = ["ReceiptReplays", "ReplayRecord", "ReplayReport", "replay_indices", "replay_report"]

_MARKERS = (b'"type":"qward/receipt/v', b'"type":"qward/replay')


@dataclass(frozen=True, kw_only=True)
class ReplayRecord:
    """One replay of a receipt: where its verdict is logged and what it says."""

    log_origin: str
    index: int
    verdict: str
    independent: bool
    same_environment: bool | None
    at: str
    detail: str


@dataclass(kw_only=True)
class ReceiptReplays:
    """A receipt of this log and every replay verdict found for it."""

    index: int
    receipt_id: str
    model_name: str
    issued_at: str
    body_sha256: str
    replays: list[ReplayRecord] = field(default_factory=list)

    @property
    def independently_reproduced(self) -> bool:
        """Whether another log recorded a replay that reproduced the output."""
        return any(r.independent and r.verdict != "mismatch" for r in self.replays)


@dataclass(frozen=True, kw_only=True)
class ReplayReport:
    """This log's receipts with their replays, and the replays it ran of other logs' receipts."""

    receipts: list[ReceiptReplays]
    #: Verdicts in this log about receipts of other logs: independent checks done here.
    foreign: list[dict[str, Any]]


def _record(origin: str, index: int, entry: dict[str, Any]) -> ReplayRecord:
    return ReplayRecord(
        log_origin=origin,
        index=index,
        verdict=str(entry["verdict"]),
        independent=bool(entry.get("independent", False)),
        same_environment=entry.get("same_environment"),
        at=str(entry.get("at", "")),
        detail=str(entry.get("detail", "")),
    )


def replay_report(
    store: LogBackend, origin: str, *, external: Iterable[VerifiedVerdict] = ()
) -> ReplayReport:
    """Match every verdict in ``store`` (the log ``origin``) and the ``external`` ones, already
    verified against their own logs' pins, to this log's receipts.

    A verdict must name a receipt by this log's origin, its index and its body digest; a verdict
    naming an index whose body differs is an error, not a silent miss.
    """
    receipts: dict[int, ReceiptReplays] = {}
    by_id: dict[str, ReceiptReplays] = {}
    verdicts: list[tuple[int, dict[str, Any]]] = []
    for index, raw, _ in store.entries_with_leaf_hashes():
        if not any(marker in raw for marker in _MARKERS):
            continue
        doc = json.loads(raw)
        kind = doc.get("type")
        if kind in (RECEIPT_ENTRY, CHECKPOINT_RECEIPT_ENTRY):
            body = doc["body"]
            receipts[index] = by_id[body["receipt_id"]] = ReceiptReplays(
                index=index,
                receipt_id=body["receipt_id"],
                model_name=body["model"]["name"],
                issued_at=body["issued_at"],
                body_sha256=hashlib.sha256(canonical_json(body)).hexdigest(),
            )
        elif kind in (REPLAY_ENTRY, REPLAY_VERDICT_ENTRY):
            verdicts.append((index, doc))
    foreign: list[dict[str, Any]] = []
    for index, doc in verdicts:
        if doc["type"] == REPLAY_ENTRY:
            legacy = by_id.get(doc["receipt_id"])
            if legacy is not None:
                legacy.replays.append(_record(origin, index, {**doc, "same_environment": None}))
        elif doc["receipt"]["log_origin"] == origin:
            _attach(receipts, doc, _record(origin, index, doc))
        else:
            foreign.append({"index": index, **doc})
    for verified in external:
        if verified.entry["receipt"]["log_origin"] == origin:
            record = _record(verified.checkpoint.origin, verified.index, verified.entry)
            _attach(receipts, verified.entry, record)
    return ReplayReport(receipts=[receipts[i] for i in sorted(receipts)], foreign=foreign)


def _attach(
    receipts: dict[int, ReceiptReplays], entry: dict[str, Any], record: ReplayRecord
) -> None:
    reference = entry["receipt"]
    target = receipts.get(reference["index"])
    if target is None or target.receipt_id != reference["receipt_id"]:
        raise VerificationError(
            f"a replay verdict ({record.log_origin} entry {record.index}) names receipt "
            f"{reference['receipt_id']} at index {reference['index']}, which this log does not hold"
        )
    if target.body_sha256 != reference["body_sha256"]:
        raise VerificationError(
            f"a replay verdict ({record.log_origin} entry {record.index}) names receipt "
            f"{reference['receipt_id']} with a different body than this log holds"
        )
    target.replays.append(record)


def replay_indices(store: LogBackend, origin: str, receipts: set[int]) -> list[int]:
    """Log indices of the verdicts this log recorded about the receipts at ``receipts``."""
    report = replay_report(store, origin)
    return [
        replay.index
        for receipt in report.receipts
        if receipt.index in receipts
        for replay in receipt.replays
    ]
