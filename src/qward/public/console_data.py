"""What the audit console shows, computed from the log itself: read through its tiles, each entry
checked against the level-0 tile hashes of a checkpoint whose signatures were verified first."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from qward.crypto.erasable import is_sealed_field
from qward.errors import FormatError, VerificationError
from qward.receipts.trust import TrustBundle
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.layout import TILE_HEIGHT, TileRef, parse_entry_bundle, tile_path, tile_width_at
from qward.tlog.merkle import leaf_hash
from qward.tlog.note import note_signatures, open_note_by_any_set
from qward.tlog.tile_reader import TileReader
from qward.tlog.witness_policy import Quorum

__all__ = ["MAX_CONSOLE_ENTRIES", "console_overview"]

#: The console reads at most this many of the newest entries (a window, not the whole log).
MAX_CONSOLE_ENTRIES = 4096
_RECENT_RUNS = 50
_RECEIPTS = ("qward/receipt/v1", "qward/receipt/v2")
_KEY_ACTIONS = ("key", "keystore", "rewrap", "retire", "rotate")


def _entries(
    size: int, fetch: Callable[[str], bytes], limit: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The newest ``limit`` entries of the tree of ``size``, each checked against its tile."""
    reader = TileReader(size=size, fetch=fetch)
    start = max(0, size - limit)
    for bundle in range(start >> TILE_HEIGHT, (size + (1 << TILE_HEIGHT) - 1) >> TILE_HEIGHT):
        width = tile_width_at(TileRef(level=None, index=bundle), size)
        raw = parse_entry_bundle(fetch(tile_path(TileRef(level=None, index=bundle, width=width))))
        for offset, entry in enumerate(raw):
            index = (bundle << TILE_HEIGHT) + offset
            if index < start or index >= size:
                continue
            if leaf_hash(entry) != reader.node(0, index):
                raise FormatError(f"entry {index} does not hash to its tile")
            yield index, json.loads(entry)


def _time(value: object) -> datetime | None:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _witnesses(note: bytes, trust: TrustBundle) -> dict[str, Any]:
    policy = trust.witness_policy
    lines = sorted({name for name, _, _ in note_signatures(note)[1]})
    if not isinstance(policy, Quorum):
        return {"required": 0, "pinned": [], "cosigned_by": [], "ok": True, "signers": lines}
    pinned = [w.name for w in policy.witnesses]
    try:
        cosigned, ok, why = list(policy.check(note)), True, ""
    except VerificationError as exc:
        cosigned, ok, why = [], False, str(exc)
    return {
        "required": policy.threshold,
        "pinned": pinned,
        "cosigned_by": cosigned,
        "ok": ok,
        "message": why,
        "signers": lines,
    }


def _caller(parameters: dict[str, Any]) -> str | None:
    caller = parameters.get("qward_caller")
    return "sealed" if is_sealed_field(caller) else caller


def _replay_of(doc: dict[str, Any]) -> str | None:
    if doc.get("type") == "qward/replay/v1":
        return str(doc.get("receipt_id"))
    if doc.get("type") == "qward/replay-verdict/v1":
        return str(doc.get("receipt", {}).get("receipt_id"))
    return None


def console_overview(
    *, note: bytes, trust: TrustBundle, fetch: Callable[[str], bytes], limit: int
) -> dict[str, Any]:
    """Everything the console's page draws, as one JSON-ready document."""
    text, _ = open_note_by_any_set(note, trust.log_key_sets)
    checkpoint = Checkpoint.from_body(text)
    counts: Counter[str] = Counter()
    runs: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    anchors: list[dict[str, Any]] = []
    replays: dict[str, list[dict[str, Any]]] = {}
    opened: dict[str, datetime] = {}
    minutes: dict[str, dict[str, Any]] = {}
    for index, doc in _entries(checkpoint.size, fetch, limit):
        kind = str(doc.get("type"))
        counts[kind] += 1
        at = _time(doc.get("at") or doc.get("body", {}).get("issued_at"))
        if at is not None:
            bucket = minutes.setdefault(
                at.strftime("%Y-%m-%dT%H:%MZ"), {"entries": 0, "runs": 0, "latency": []}
            )
            bucket["entries"] += 1
            bucket["last_index"] = index
        if kind == "qward/key-use/v1" and at is not None:
            opened.setdefault(str(doc.get("request_id")), at)
        elif kind in _RECEIPTS:
            body = doc["body"]
            started = opened.get(body["receipt_id"])
            latency = (at - started).total_seconds() if at and started else None
            if at is not None:
                minutes[at.strftime("%Y-%m-%dT%H:%MZ")]["runs"] += 1
                if latency is not None:
                    minutes[at.strftime("%Y-%m-%dT%H:%MZ")]["latency"].append(latency)
            runs.append(
                {
                    "index": index,
                    "receipt_id": body["receipt_id"],
                    "model": body["model"]["name"],
                    "caller": _caller(body["parameters"]),
                    "at": body["issued_at"],
                    "latency_seconds": latency,
                }
            )
        elif kind == "qward/admin/v1" and any(k in str(doc.get("action")) for k in _KEY_ACTIONS):
            keys.append({"index": index, "at": doc.get("at"), "action": doc.get("action")})
        elif kind == "qward/anchor/v1":
            anchors.append({"index": index, **{k: v for k, v in doc.items() if k != "proof"}})
        if (receipt_id := _replay_of(doc)) is not None:
            replays.setdefault(receipt_id, []).append(
                {"index": index, "verdict": doc.get("verdict"), "at": doc.get("at")}
            )
    for run in runs:
        run["replays"] = replays.get(run["receipt_id"], [])
        run["anchored_by"] = [
            a["index"] for a in anchors if int(a.get("size", 0) or 0) > run["index"]
        ]
    series = [
        {
            "minute": minute,
            "entries": b["entries"],
            "runs": b["runs"],
            "log_size": b["last_index"] + 1,
            "mean_latency_seconds": sum(b["latency"]) / len(b["latency"]) if b["latency"] else None,
        }
        for minute, b in sorted(minutes.items())
    ]
    return {
        "log": {
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "root_hash": checkpoint.root_hash.hex(),
            "window": min(limit, checkpoint.size),
        },
        "witnesses": _witnesses(note, trust),
        "entry_types": dict(sorted(counts.items())),
        "runs": runs[-_RECENT_RUNS:][::-1],
        "keys": keys,
        "anchors": anchors,
        "series": series,
    }
