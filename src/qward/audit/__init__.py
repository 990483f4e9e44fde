"""Audit tools over the transparency log: who ran which model on which input digest, when; where
the log has gaps; and evidence bundles that verify offline on another machine.

An evidence bundle holds the selected log entries (signed receipts among them), an inclusion proof
for each against one signed checkpoint (with the witness cosignatures stored on it), and the
operator's public keys for convenience. Verifying it needs only the bundle and a trust bundle
pinned out of band: the keys inside the bundle are compared with the pinned ones, never trusted on
their own, and the witness quorum that must have cosigned the checkpoint is the pinned one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from qward.anchoring.base import Anchor
from qward.crypto.erasable import is_sealed_field, sealed_key_id
from qward.crypto.signatures import ReceiptSignature, verify_signature
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, InputError, VerificationError
from qward.receipts.anchors import (
    AnchorCheck,
    anchor_section,
    select_anchors,
    verify_bundle_anchors,
)
from qward.receipts.entries import (
    ADMIN_ENTRY,
    CHECKPOINT_RECEIPT_ENTRY,
    RECEIPT_ENTRY,
    REPLAY_VERDICT_ENTRY,
)
from qward.receipts.receipt import (
    CHECKPOINT_RECEIPT_FORMAT,
    RECEIPT_FORMAT,
    SIGNING_CONTEXT,
    ReceiptBundle,
    check_body,
)
from qward.receipts.replay_evidence import check_verdict_entry
from qward.receipts.trust import TrustBundle
from qward.tlog.backend import LogBackend, note_checkpoint
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.merkle import leaf_hash, verify_inclusion
from qward.tlog.note import note_signatures, open_note_by_any_set
from qward.tlog.witness_policy import Quorum, UnsafeNoWitnesses, WitnessPolicy

__all__ = [
    "CLOCK_TOLERANCE_SECONDS",
    "EVIDENCE_FORMAT",
    "ClockRollback",
    "CoreRun",
    "EvidenceReport",
    "GapReport",
    "RunRecord",
    "UncleanStop",
    "export_evidence",
    "find_gaps",
    "query_runs",
    "refresh_receipt",
    "verify_evidence",
]

EVIDENCE_FORMAT = "qward/evidence/v1"
_MAX_EVIDENCE = 256 * 1024 * 1024
#: How far an entry's time may lag the one before it before ``find_gaps`` calls it a rollback.
#: Times are stamped before the entry is sequenced (a receipt's before it is signed), so
#: concurrent requests can land a second or two out of order without any clock going back.
CLOCK_TOLERANCE_SECONDS = 5.0

_RECEIPT_ENTRIES = (RECEIPT_ENTRY, CHECKPOINT_RECEIPT_ENTRY)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One attested run as the log records it."""

    index: int
    issued_at: str
    caller: str | None
    model_name: str
    model_sha256: str
    input_sha256: str
    output_sha256: str
    receipt_id: str
    #: The caller's token id as sealed in the log, when callers are declared personal (then
    #: ``caller`` shows only ``sealed:<subject key id>``).
    sealed_caller: dict[str, Any] | None = None


def _runs(store: LogBackend) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    for index, entry, _ in store.entries_with_leaf_hashes():
        if b'"type":"qward/receipt/v' not in entry:
            continue
        doc = json.loads(entry)
        if doc.get("type") in _RECEIPT_ENTRIES:
            yield index, entry, doc


def query_runs(
    store: LogBackend,
    *,
    model: str | None = None,
    caller: str | None = None,
    since: str | None = None,
) -> list[RunRecord]:
    """Runs in log order, filtered by model name or digest, caller token id, and ISO time."""
    records = []
    for index, _, doc in _runs(store):
        body = doc["body"]
        logged = body["parameters"].get("qward_caller")
        sealed = logged if isinstance(logged, dict) and is_sealed_field(logged) else None
        record = RunRecord(
            index=index,
            issued_at=body["issued_at"],
            caller=f"sealed:{sealed_key_id(sealed)[:12]}" if sealed else logged,
            sealed_caller=sealed,
            model_name=body["model"]["name"],
            model_sha256=body["model"]["sha256"],
            # A salted run names its input only by commitment; shown with its kind.
            input_sha256=body["input"].get("sha256") or f"hmac:{body['input']['hmac_sha256']}",
            output_sha256=body["output"]["sha256"],
            receipt_id=body["receipt_id"],
        )
        if model is not None and model not in (record.model_name, record.model_sha256):
            continue
        if caller is not None and record.caller != caller:
            continue
        if since is not None and record.issued_at < since:
            continue
        records.append(record)
    return records


# -- gaps ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CoreRun:
    """One core process as the log records it: its ``core-start`` entry and its last entry."""

    start_index: int
    started_at: str
    pid: int | None
    last_index: int
    last_at: str


@dataclass(frozen=True, kw_only=True)
class UncleanStop:
    """A core run with no ``core-stop`` before the next ``core-start``: a crash, ``kill -9`` or
    power loss. Nothing is missing from the log itself (every audited action is logged before it
    happens), but from ``run.last_at`` to ``restarted_at`` the log cannot say what the host did."""

    run: CoreRun
    restart_index: int
    restarted_at: str


@dataclass(frozen=True, kw_only=True)
class ClockRollback:
    """An entry stamped earlier than the entry before it, by more than the tolerance."""

    index: int
    at: str
    previous_index: int
    previous_at: str
    seconds: float


@dataclass(frozen=True, kw_only=True)
class GapReport:
    """What ``find_gaps`` found in the whole log."""

    entries: int
    starts: int
    unclean_stops: tuple[UncleanStop, ...]
    clock_rollbacks: tuple[ClockRollback, ...]
    #: The latest run, if it has no ``core-stop``: still running, or died and not restarted yet.
    open_run: CoreRun | None

    @property
    def has_gaps(self) -> bool:
        """Whether any unclean stop or clock rollback was found."""
        return bool(self.unclean_stops or self.clock_rollbacks)


@functools.lru_cache(maxsize=4096)
def _parse_time(value: str) -> datetime | None:
    # Cached: entries are stamped to the second, so consecutive entries mostly share a stamp.
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _entry_time(doc: dict[str, Any]) -> tuple[str, datetime] | None:
    """When an entry says it happened: a receipt's ``issued_at``, every other entry's ``at``."""
    body = doc.get("body")
    value = body.get("issued_at") if isinstance(body, dict) else doc.get("at")
    if not isinstance(value, str):
        return None
    parsed = _parse_time(value)
    return None if parsed is None else (value, parsed)


_AT_FIRST = b'{"at":"'


def _gap_fields(entry: bytes) -> dict[str, Any] | None:
    """The fields ``find_gaps`` reads. Access, key-use and replay entries (canonical JSON whose
    first key is ``at``) need only their time, read without parsing the whole entry."""
    if entry.startswith(_AT_FIRST):
        end = entry.find(b'"', len(_AT_FIRST))
        return {"at": entry[len(_AT_FIRST) : end].decode("utf-8", "replace")}
    try:
        doc = json.loads(entry)
    except ValueError:
        return None  # not ours to judge here; `qward log verify` checks every entry's integrity
    return doc if isinstance(doc, dict) else None


class _GapWalk:
    """The state ``find_gaps`` carries from one entry to the next."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.run: CoreRun | None = None
        self.starts = 0
        self.stops: list[UncleanStop] = []
        self.rollbacks: list[ClockRollback] = []
        self.previous: tuple[int, str, datetime] | None = None

    def see(self, index: int, doc: dict[str, Any]) -> None:
        stamped = _entry_time(doc)
        at = stamped[0] if stamped else ""
        if stamped is not None:
            self._check_clock(index, *stamped)
        action = doc.get("action") if doc.get("type") == ADMIN_ENTRY else None
        if action == "core-start":
            self.starts += 1
            if self.run is not None:
                self.stops.append(UncleanStop(run=self.run, restart_index=index, restarted_at=at))
            details = doc.get("details")
            pid = details.get("pid") if isinstance(details, dict) else None
            self.run = CoreRun(
                start_index=index,
                started_at=at,
                pid=pid if type(pid) is int else None,
                last_index=index,
                last_at=at,
            )
        elif action == "core-stop":
            self.run = None
        elif self.run is not None:
            self.run = replace(self.run, last_index=index, last_at=at or self.run.last_at)

    def _check_clock(self, index: int, at: str, when: datetime) -> None:
        previous = self.previous
        if previous is not None:
            back = (previous[2] - when).total_seconds()
            if back > self.tolerance:
                self.rollbacks.append(
                    ClockRollback(
                        index=index,
                        at=at,
                        previous_index=previous[0],
                        previous_at=previous[1],
                        seconds=back,
                    )
                )
        self.previous = (index, at, when)


def find_gaps(store: LogBackend, *, tolerance: float = CLOCK_TOLERANCE_SECONDS) -> GapReport:
    """Walk the whole log for unclean core stops and backwards clock jumps.

    1. Every ``core-start`` admin entry while the previous run has no ``core-stop`` is an unclean
       stop of that run (the core logs ``core-stop`` on every orderly shutdown).
    2. Every entry stamped more than ``tolerance`` seconds before the entry preceding it is a
       clock rollback (compared with its neighbour, so one jump is reported once).

    This assumes one core appends to the log at a time, as qward's deployments do.
    """
    walk = _GapWalk(tolerance)
    entries = 0
    for index, entry, _ in store.entries_with_leaf_hashes():
        entries += 1
        doc = _gap_fields(entry)
        if doc is not None:
            walk.see(index, doc)
    return GapReport(
        entries=entries,
        starts=walk.starts,
        unclean_stops=tuple(walk.stops),
        clock_rollbacks=tuple(walk.rollbacks),
        open_run=walk.run,
    )


# -- evidence bundles ----------------------------------------------------------------------------


def _meets(policy: WitnessPolicy, note: bytes) -> bool:
    """Whether ``note`` carries enough cosignature lines from ``policy``'s witnesses to be worth
    verifying; a cheap filter on names and key ids, no signature is checked here."""
    if not isinstance(policy, Quorum):
        return True
    keys = {(w.name, w.key_id): w.name for w in policy.witnesses}
    _, lines = note_signatures(note)
    return len({keys[(n, k)] for n, k, _ in lines if (n, k) in keys}) >= policy.threshold


def _evidence_checkpoint(store: LogBackend, policy: WitnessPolicy) -> bytes:
    """The newest stored checkpoint carrying the quorum ``policy`` asks for.

    Usually that is the latest one; it may still be waiting for its cosignatures, or have been
    published while a witness was down, and then the newest one the quorum did cosign is used.
    """
    latest = store.latest_checkpoint()
    if latest is None:
        raise VerificationError("the log has no published checkpoint yet")
    chosen = latest if _meets(policy, latest) else None
    if chosen is None:
        for note in store.checkpoints():
            if _meets(policy, note):
                chosen = note
    if chosen is None:
        raise VerificationError(
            "no stored checkpoint carries the witness quorum the trust bundle pins"
        )
    policy.check(chosen)  # a stored cosignature that does not verify is worth an error
    return chosen


def refresh_receipt(store: LogBackend, trust: TrustBundle, receipt: bytes) -> bytes:
    """``receipt`` proved again against the newest checkpoint carrying ``trust``'s witness quorum.

    A receipt issued before witnesses were configured names a checkpoint no witness cosigned; its
    entry is in the log all the same, and an inclusion proof into a cosigned checkpoint shows it.
    The signed body is unchanged; only the checkpoint and the proof are replaced, and the result
    is verified like any receipt.
    """
    bundle = ReceiptBundle.from_bytes(receipt)
    note = _evidence_checkpoint(store, trust.witness_policy)
    size = note_checkpoint(note).size
    if bundle.index >= size:
        raise VerificationError(
            f"no checkpoint with the pinned witness quorum covers entry {bundle.index} yet"
        )
    refreshed = replace(
        bundle, checkpoint=note, inclusion_proof=store.inclusion_proof(bundle.index, size)
    )
    return refreshed.to_bytes()


def export_evidence(store: LogBackend, trust: TrustBundle, indices: list[int]) -> bytes:
    """An evidence bundle for the entries at ``indices``, proved against the newest checkpoint
    that meets ``trust``'s witness quorum (its cosignature lines travel with it). Entries that
    checkpoint does not cover yet are left out (the bundle's ``items`` say which are in)."""
    note = _evidence_checkpoint(store, trust.witness_policy)
    size = note_checkpoint(note).size
    anchors = select_anchors(store, size, [i for i in indices if i < size])
    items = [
        {
            "index": i,
            "entry": b64encode(store.entry(i)),
            "inclusion_proof": [b64encode(h) for h in store.inclusion_proof(i, size)],
        }
        for i in sorted(set(indices) | set(anchors))
        if i < size
    ]
    doc = {
        "format": EVIDENCE_FORMAT,
        "checkpoint": note.decode("utf-8"),
        "trust": json.loads(trust.to_bytes()),
        "items": items,
    }
    if anchors:  # the anchor entries' consistency proofs (qward.receipts.anchors)
        doc["anchors"] = anchor_section(store, size, anchors)
    return canonical_json(doc)


@dataclass(frozen=True, kw_only=True)
class EvidenceReport:
    """What an evidence bundle proved."""

    checkpoint: Checkpoint
    entries: int
    receipts: int
    #: Replay verdicts (``qward/replay-verdict/v1``) among the entries.
    replays: int = 0
    #: The pinned witnesses whose cosignatures on the checkpoint verified (none if not pinned).
    cosigned_by: tuple[str, ...] = ()
    #: How many of them the pinned trust requires (0: ``UnsafeNoWitnesses``).
    quorum: int = 0
    #: Whether the bundle's operator declares witnesses that the pinned trust does not require.
    unpinned_witnesses: bool = False
    #: The ledger anchors in the bundle that verified (checked on the ledger if one was given).
    anchors: tuple[AnchorCheck, ...] = ()


def _operator_keys(trust: TrustBundle) -> bytes:
    return replace(trust, witness_policy=UnsafeNoWitnesses()).to_bytes()


def _check_bundle_keys(value: Any, trust: TrustBundle) -> TrustBundle:
    """The bundle's copy of the operator's keys must be the pinned keys. Its witness section may
    differ (a verifier may pin a stricter or no quorum); only the pinned quorum is enforced."""
    try:
        carried = TrustBundle.from_bytes(canonical_json(value))
    except InputError as exc:
        raise FormatError(f"evidence bundle: its trust section does not parse: {exc}") from None
    if _operator_keys(carried) != _operator_keys(trust):
        raise VerificationError("the bundle's public keys differ from the pinned trust bundle")
    return carried


def _check_quorum(note: bytes, policy: WitnessPolicy) -> tuple[str, ...]:
    try:
        return policy.check(note)
    except VerificationError as exc:
        raise type(exc)(
            f"evidence checkpoint does not meet the pinned witness quorum: {exc}"
        ) from None


def verify_evidence(
    data: bytes, *, trust: TrustBundle, ledgers: Sequence[Anchor] = ()
) -> EvidenceReport:
    """Verify a bundle offline against a pinned ``trust``; raises on the first problem.

    1. The bundle's operator keys must equal the pinned ones.
    2. The checkpoint must carry every pinned log signature and the pinned origin.
    3. The checkpoint must carry the pinned witness quorum (``trust.witness_policy``), checked
       with the pinned witness keys; witness keys inside the bundle are never used.
    4. Each entry must be included in the checkpoint's tree at its index.
    5. Each receipt entry's hybrid signature must verify under a pinned receipt key.
    6. Each anchor entry must bind its signed note, consistent with the checkpoint, and, with
       ``ledgers``, be confirmed by the ledger (``qward.receipts.anchors``).
    """
    if len(data) > _MAX_EVIDENCE:
        raise FormatError("evidence bundle is over the size limit")
    doc = parse_canonical_json(data, what="evidence bundle")
    if doc.get("format") != EVIDENCE_FORMAT or not isinstance(doc.get("items"), list):
        raise FormatError("not a qward evidence bundle")
    carried = _check_bundle_keys(doc.get("trust"), trust)
    note = str(doc.get("checkpoint")).encode("utf-8")
    text, _ = open_note_by_any_set(note, trust.log_key_sets)
    checkpoint = Checkpoint.from_body(text)
    if checkpoint.origin != trust.origin:
        raise VerificationError(f"checkpoint is from {checkpoint.origin!r}, not the pinned log")
    cosigned_by = _check_quorum(note, trust.witness_policy)
    kinds = [_verify_item(item, checkpoint, trust) for item in doc["items"]]
    anchors = verify_bundle_anchors(doc, checkpoint, trust, ledgers)
    pinned = trust.witness_policy
    return EvidenceReport(
        checkpoint=checkpoint,
        entries=len(doc["items"]),
        receipts=kinds.count("receipt"),
        replays=kinds.count("replay"),
        cosigned_by=cosigned_by,
        quorum=pinned.threshold if isinstance(pinned, Quorum) else 0,
        unpinned_witnesses=isinstance(carried.witness_policy, Quorum)
        and not isinstance(pinned, Quorum),
        anchors=anchors,
    )


def _verify_item(item: object, checkpoint: Checkpoint, trust: TrustBundle) -> str:
    """Check one evidence item's inclusion, and its contents when it is a receipt (signature)
    or a replay verdict (shape); returns its kind: receipt, replay or entry."""
    if not isinstance(item, dict):
        raise FormatError("evidence item must be an object")
    index, entry = item.get("index"), b64decode(item.get("entry"), what="evidence entry")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < checkpoint.size:
        raise FormatError("evidence item index is outside the checkpoint's tree")
    proof = item.get("inclusion_proof", [])
    if not isinstance(proof, list):
        raise FormatError("evidence item inclusion_proof must be a list")
    verify_inclusion(
        leaf_hash=leaf_hash(entry),
        index=index,
        size=checkpoint.size,
        proof=tuple(b64decode(h, what="evidence proof") for h in proof),
        root=checkpoint.root_hash,
    )
    parsed = parse_canonical_json(entry, what=f"log entry {index}")
    kind = parsed.get("type")
    if kind == REPLAY_VERDICT_ENTRY:
        check_verdict_entry(parsed)
        return "replay"
    if kind not in _RECEIPT_ENTRIES:
        return "entry"
    body = parsed.get("body")
    if not isinstance(body, dict):
        raise FormatError(f"log entry {index}: receipt body must be an object")
    check_body(body)
    if kind == CHECKPOINT_RECEIPT_ENTRY:
        # Proved above under the checkpoint, whose signatures the caller checked.
        if body["format"] != CHECKPOINT_RECEIPT_FORMAT or set(parsed) != {"type", "body"}:
            raise FormatError(f"log entry {index}: a v2 receipt entry holds a v2 body only")
        return "receipt"
    if body["format"] != RECEIPT_FORMAT:
        raise FormatError(f"log entry {index}: a v1 receipt entry holds a v1 body only")
    signature = ReceiptSignature.from_json(parsed.get("signature"))
    verify_signature(
        canonical_json(body),
        signature,
        trust.receipt_key(signature.key_id),
        context=SIGNING_CONTEXT,
    )
    return "receipt"
