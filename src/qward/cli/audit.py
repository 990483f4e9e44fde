"""Transparency-log and audit commands: log verify, audit query/gaps/export/verify."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qward.audit import (
    CLOCK_TOLERANCE_SECONDS,
    GapReport,
    RunRecord,
    export_evidence,
    find_gaps,
    query_runs,
    verify_evidence,
)
from qward.audit.replays import replay_indices
from qward.cli._app import (
    DEFAULT_STATE,
    StateDir,
    audit_app,
    console,
    log_app,
    print_table,
    trust_bundle,
    working,
    writable_path,
    write_file,
)
from qward.cli.anchors import ethereum_ledgers, print_anchors
from qward.cli.timespec import parse_since
from qward.crypto.erasable import parameter_context
from qward.encoding import read_limited
from qward.errors import InputError, VerificationError
from qward.receipts.trust import TrustBundle
from qward.sdk.core_process import core_session
from qward.tlog.backend import LogBackend
from qward.tlog.location import log_location, open_log_store
from qward.tlog.witness_policy import Quorum

__all__ = ["LogDatabase", "open_log"]


LogDatabase = Annotated[
    str | None,
    typer.Option(
        "--log-database",
        envvar="QWARD_LOG_DATABASE",
        help="postgresql:// URL of the log (default: the state directory's log.sqlite).",
    ),
]


@log_app.command("verify")
def _log_verify(
    state_dir: StateDir = DEFAULT_STATE,
    log_database: LogDatabase = None,
    trusted: Annotated[
        list[Path] | None,
        typer.Option(
            "--trusted", help="A signed checkpoint trusted before (file; repeat for more)."
        ),
    ] = None,
    seen_file: Annotated[
        Path | None,
        typer.Option(
            help="Where this verifier keeps the newest checkpoint it verified (default: "
            "$XDG_STATE_HOME/qward/seen/<log>.checkpoint); a later, smaller or different log fails."
        ),
    ] = None,
) -> None:
    """Recompute the whole log from its entries, check every checkpoint, and check it against
    the checkpoints this verifier trusted before (rollback and rewrite detection)."""
    from qward.tlog.audit import verify_log

    trust = trust_bundle(state_dir, None)
    seen = seen_file or _default_seen_file(trust.origin)
    notes = [
        read_limited(str(p), limit=_MAX_NOTE, what="trusted checkpoint") for p in trusted or []
    ]
    if seen.exists():
        notes.append(read_limited(str(seen), limit=_MAX_NOTE, what="seen checkpoint"))
    store = open_log(state_dir, log_database)
    try:
        witnesses = trust.witness_policy
        with working("recomputing the log"):
            report = verify_log(
                store,
                origin=trust.origin,
                verifiers=trust.log_verifiers,
                key_sets=trust.log_key_sets,
                cosigners=witnesses.witnesses if isinstance(witnesses, Quorum) else (),
                trusted=notes,
            )
    finally:
        store.close()
    _remember(seen, report.latest)
    pending = report.entries - report.tree_size
    console.print(
        f"[green]OK[/green] {report.entries} entries, {report.checkpoints} checkpoints "
        f"verified in {report.seconds:.3f} s; consistent with {report.trusted} checkpoints "
        f"trusted before" + (f"; {pending} entries await integration" if pending else "")
    )


_MAX_NOTE = 64 * 1024


def _default_seen_file(origin: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return (
        base / "qward" / "seen" / f"{hashlib.sha256(origin.encode()).hexdigest()[:32]}.checkpoint"
    )


def _remember(path: Path, note: bytes) -> None:
    """Keep the newest verified checkpoint, as a witness keeps its latest (written atomically)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(note)
        os.replace(partial, path)
    except OSError as exc:
        raise InputError(
            f"cannot remember the verified checkpoint in {path}: {exc.strerror}"
        ) from None


def open_log(state_dir: Path, log_database: str | None = None) -> LogBackend:
    location = log_location(state_dir, log_database)
    if not location.startswith(("postgresql://", "postgres://")) and not Path(location).exists():
        raise InputError(f"no log at {location}")
    return open_log_store(location)


@audit_app.command("query")
def _audit_query(
    model: Annotated[str | None, typer.Option(help="Model name or sha256.")] = None,
    caller: Annotated[str | None, typer.Option(help="Token id of the caller.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only runs since: ISO 8601 (2026-11-24T08:00:00Z) or 30m, 24h, 7d."),
    ] = None,
    show_gaps: Annotated[
        bool, typer.Option("--show-gaps", help="Also list unclean core stops and clock jumps.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (full digests) instead.")
    ] = False,
    wide: Annotated[
        bool, typer.Option("--wide", help="Full digests in the table (no shortening).")
    ] = False,
    reveal: Annotated[
        bool,
        typer.Option(
            "--reveal",
            help="Ask the core to open sealed callers (admin); erased ones show [erased].",
        ),
    ] = False,
    state_dir: StateDir = DEFAULT_STATE,
    log_database: LogDatabase = None,
) -> None:
    """Who ran which model on which input digest, and when (warning if the log has gaps)."""
    # Checked before the log is opened: a typo must not look like "0 runs".
    cutoff = None
    if since is not None:
        moment = parse_since(since, now=datetime.now(UTC))
        cutoff = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    store = open_log(state_dir, log_database)
    try:
        records = query_runs(store, model=model, caller=caller, since=cutoff)
        gaps = find_gaps(store)
    finally:
        store.close()
    if reveal:
        records = _revealed(records, state_dir)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "runs": [dataclasses.asdict(r) for r in records],
                    "unclean_stops": len(gaps.unclean_stops),
                    "clock_rollbacks": len(gaps.clock_rollbacks),
                },
                indent=2,
            )
            + "\n"
        )
        return
    shown = None if wide else 16
    table = Table("log index", "issued at", "caller", "model", "input sha256", "output sha256")
    for r in records:
        table.add_row(
            str(r.index),
            r.issued_at,
            r.caller or "-",
            r.model_name,
            r.input_sha256[:shown],
            r.output_sha256[:shown],
        )
    # A table never folds to the width rich guesses for a pipe: each row stays on one line.
    print_table(table)
    console.print(f"{len(records)} runs")
    if show_gaps:
        _print_gaps(gaps)
    elif gaps.has_gaps:
        console.print(
            f"[yellow]warning[/yellow]: the log shows {len(gaps.unclean_stops)} unclean core "
            f"stops and {len(gaps.clock_rollbacks)} clock rollbacks; see `qward audit gaps`"
        )


def _revealed(records: list[RunRecord], state_dir: Path) -> list[RunRecord]:
    """Records whose sealed callers the core opened (plaintext, or "[erased]")."""
    sealed = [r for r in records if r.sealed_caller is not None]
    if not sealed:
        return records
    with core_session(state_dir) as core:
        values = core.reveal_fields(
            [
                {"value": r.sealed_caller, "context": parameter_context("qward_caller")}
                for r in sealed
            ]
        )
    opened = {r.index: str(v) for r, v in zip(sealed, values, strict=True)}
    return [dataclasses.replace(r, caller=opened.get(r.index, r.caller)) for r in records]


@audit_app.command("gaps")
def _audit_gaps(
    clock_tolerance: Annotated[
        float,
        typer.Option(help="Seconds an entry may lag the one before it without being flagged."),
    ] = CLOCK_TOLERANCE_SECONDS,
    state_dir: StateDir = DEFAULT_STATE,
    log_database: LogDatabase = None,
) -> None:
    """Core runs that ended without a clean stop, and clock jumps backwards; exit 1 if any."""
    if clock_tolerance < 0:
        raise InputError("--clock-tolerance must not be negative")
    store = open_log(state_dir, log_database)
    try:
        gaps = find_gaps(store, tolerance=clock_tolerance)
    finally:
        store.close()
    _print_gaps(gaps)
    if gaps.has_gaps:
        # The CLI's one error exit: exit code 1, like any other check that did not pass.
        raise VerificationError(
            f"the log shows {len(gaps.unclean_stops)} unclean core stops and "
            f"{len(gaps.clock_rollbacks)} clock rollbacks"
        )


def _print_gaps(gaps: GapReport) -> None:
    if gaps.unclean_stops:
        table = Table(
            "run started", "pid", "last entry", "restarted", title="Core runs without a clean stop"
        )
        for gap in gaps.unclean_stops:
            run = gap.run
            table.add_row(
                f"#{run.start_index} {run.started_at}",
                "-" if run.pid is None else str(run.pid),
                f"#{run.last_index} {run.last_at}",
                f"#{gap.restart_index} {gap.restarted_at}",
            )
        print_table(table)
    if gaps.clock_rollbacks:
        table = Table("entry", "stamped", "previous entry", "back by", title="Clock rollbacks")
        for back in gaps.clock_rollbacks:
            table.add_row(
                f"#{back.index}",
                back.at,
                f"#{back.previous_index} {back.previous_at}",
                f"{back.seconds:.0f} s",
            )
        print_table(table)
    if gaps.open_run is not None:
        run = gaps.open_run
        console.print(
            f"the core run started at #{run.start_index} ({run.started_at}) has no stop entry: "
            f"it is running, or stopped uncleanly and has not been restarted"
        )
    colour = "red" if gaps.has_gaps else "green"
    console.print(
        f"[{colour}]{len(gaps.unclean_stops)} unclean stops, {len(gaps.clock_rollbacks)} "
        f"clock rollbacks[/{colour}] in {gaps.entries} entries ({gaps.starts} core starts)"
    )


@audit_app.command("export")
def _audit_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Evidence bundle to write.")],
    model: Annotated[str | None, typer.Option(help="Only runs of this model.")] = None,
    caller: Annotated[str | None, typer.Option(help="Only runs by this token id.")] = None,
    state_dir: StateDir = DEFAULT_STATE,
    log_database: LogDatabase = None,
) -> None:
    """Write an evidence bundle (receipts, proofs, checkpoint, public keys) for offline checks."""
    writable_path(output, what="evidence bundle")
    store = open_log(state_dir, log_database)
    try:
        with working("collecting receipts and proofs"):
            runs = query_runs(store, model=model, caller=caller)
            trust = trust_bundle(state_dir, None)
            # Each receipt travels with the verdicts of its replays that this log recorded.
            replays = replay_indices(store, trust.origin, {r.index for r in runs})
            bundle = export_evidence(store, trust, [r.index for r in runs] + replays)
    finally:
        store.close()
    write_file(output, bundle, what="evidence bundle")
    written = json.loads(bundle)
    included = {item["index"] for item in written["items"]}
    receipts = sum(r.index in included for r in runs)
    verdicts = sum(i in included for i in replays)
    anchored = len(written.get("anchors", []))
    console.print(
        f"wrote {output}: {receipts} receipts and {verdicts} replay verdicts with inclusion proofs"
        + (f", {anchored} ledger anchors" if anchored else "")
    )
    if receipts < len(runs):
        console.print(
            f"[yellow]warning[/yellow]: {len(runs) - receipts} newer receipts are not yet covered "
            "by a checkpoint carrying the pinned witness quorum; export again later"
        )


@audit_app.command("verify")
def _audit_verify(
    bundle: Annotated[Path, typer.Argument(help="Evidence bundle.")],
    trust_file: Annotated[Path, typer.Option("--trust", help="Pinned trust bundle.")],
    rpc_url: Annotated[
        str | None,
        typer.Option(
            "--rpc-url", help="Also check Ethereum anchors on this JSON-RPC node (one you trust)."
        ),
    ] = None,
    confirmations: Annotated[
        int, typer.Option(help="Confirmations an anchor needs on chain (with --rpc-url).")
    ] = 12,
) -> None:
    """Verify an evidence bundle offline against a pinned trust bundle (and its anchors)."""
    trust = TrustBundle.from_bytes(read_limited(str(trust_file), limit=256 * 1024, what="trust"))
    report = verify_evidence(
        read_limited(str(bundle), limit=256 * 1024 * 1024, what="bundle"),
        trust=trust,
        ledgers=ethereum_ledgers(rpc_url, confirmations),
    )
    console.print(
        f"[green]OK[/green] {report.entries} entries ({report.receipts} receipts, "
        f"{report.replays} replay verdicts) "
        f"proved against checkpoint {report.checkpoint.size} of {report.checkpoint.origin}"
    )
    if report.quorum:
        console.print(
            f"cosigned by {len(report.cosigned_by)} pinned witnesses (quorum {report.quorum}): "
            + ", ".join(report.cosigned_by)
        )
    else:
        console.print(
            "[yellow]warning[/yellow]: the pinned trust bundle requires no witness cosignatures "
            "(UnsafeNoWitnesses); the checkpoint is not protected against a split view"
            + (
                ", although the operator declares witnesses: pin them to check them"
                if report.unpinned_witnesses
                else ""
            )
        )
    print_anchors(report.anchors, online=rpc_url is not None)
