"""Transparency-log and audit commands: log verify, audit query/export/verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qward.audit import export_evidence, query_runs, verify_evidence
from qward.cli._app import (
    DEFAULT_STATE,
    StateDir,
    audit_app,
    console,
    log_app,
    trust_bundle,
)
from qward.encoding import read_limited
from qward.errors import (
    InputError,
)
from qward.receipts.trust import TrustBundle
from qward.tlog.backend import LogBackend
from qward.tlog.location import log_location, open_log_store

__all__: list[str] = []


LogDatabase = Annotated[
    str | None,
    typer.Option(
        "--log-database",
        envvar="QWARD_LOG_DATABASE",
        help="postgresql:// URL of the log (default: the state directory's log.sqlite).",
    ),
]


@log_app.command("verify")
def _log_verify(state_dir: StateDir = DEFAULT_STATE, log_database: LogDatabase = None) -> None:
    """Recompute the whole log from its entries and check every checkpoint."""
    from qward.tlog.audit import verify_log

    trust = trust_bundle(state_dir, None)
    store = _open_log(state_dir, log_database)
    try:
        report = verify_log(store, origin=trust.origin, verifiers=trust.log_verifiers)
    finally:
        store.close()
    console.print(
        f"[green]OK[/green] {report.entries} entries, {report.checkpoints} checkpoints "
        f"verified in {report.seconds:.3f} s"
    )


def _open_log(state_dir: Path, log_database: str | None = None) -> LogBackend:
    location = log_location(state_dir, log_database)
    if not location.startswith(("postgresql://", "postgres://")) and not Path(location).exists():
        raise InputError(f"no log at {location}")
    return open_log_store(location)


@audit_app.command("query")
def _audit_query(
    model: Annotated[str | None, typer.Option(help="Model name or sha256.")] = None,
    caller: Annotated[str | None, typer.Option(help="Token id of the caller.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-24T00:00:00Z.")] = None,
    state_dir: StateDir = DEFAULT_STATE,
    log_database: LogDatabase = None,
) -> None:
    """Who ran which model on which input digest, and when."""
    store = _open_log(state_dir, log_database)
    try:
        records = query_runs(store, model=model, caller=caller, since=since)
    finally:
        store.close()
    table = Table("log index", "issued at", "caller", "model", "input sha256", "output sha256")
    for r in records:
        table.add_row(
            str(r.index),
            r.issued_at,
            r.caller or "-",
            r.model_name,
            r.input_sha256[:16],
            r.output_sha256[:16],
        )
    console.print(table)
    console.print(f"{len(records)} runs")


@audit_app.command("export")
def _audit_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Evidence bundle to write.")],
    model: Annotated[str | None, typer.Option(help="Only runs of this model.")] = None,
    caller: Annotated[str | None, typer.Option(help="Only runs by this token id.")] = None,
    state_dir: StateDir = DEFAULT_STATE,
    log_database: LogDatabase = None,
) -> None:
    """Write an evidence bundle (receipts, proofs, checkpoint, public keys) for offline checks."""
    store = _open_log(state_dir, log_database)
    try:
        runs = query_runs(store, model=model, caller=caller)
        bundle = export_evidence(store, trust_bundle(state_dir, None), [r.index for r in runs])
    finally:
        store.close()
    output.write_bytes(bundle)
    console.print(f"wrote {output}: {len(runs)} receipts with inclusion proofs")


@audit_app.command("verify")
def _audit_verify(
    bundle: Annotated[Path, typer.Argument(help="Evidence bundle.")],
    trust_file: Annotated[Path, typer.Option("--trust", help="Pinned trust bundle.")],
) -> None:
    """Verify an evidence bundle offline against a pinned trust bundle."""
    trust = TrustBundle.from_bytes(read_limited(str(trust_file), limit=256 * 1024, what="trust"))
    report = verify_evidence(
        read_limited(str(bundle), limit=256 * 1024 * 1024, what="bundle"), trust=trust
    )
    console.print(
        f"[green]OK[/green] {report.entries} entries ({report.receipts} receipts) "
        f"proved against checkpoint {report.checkpoint.size} of {report.checkpoint.origin}"
    )
