"""Replay evidence commands: audit replays (who reproduced which receipt) and verify-replay."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qward.audit.replays import ReceiptReplays, ReplayReport, replay_report
from qward.cli._app import (
    DEFAULT_STATE,
    StateDir,
    audit_app,
    console,
    print_table,
    trust_bundle,
    write_file,
)
from qward.cli.audit import LogDatabase, open_log
from qward.encoding import read_limited
from qward.errors import InputError, ReplayMismatchError
from qward.receipts.receipt import MAX_RECEIPT_BYTES
from qward.receipts.replay_evidence import VerifiedVerdict, verify_replay_verdict
from qward.receipts.trust import TrustBundle

__all__ = ["keep_verdict"]

_MAX_TRUST = 256 * 1024
_MAX_VERDICT = 1024 * 1024


@contextmanager
def keep_verdict(out: Path) -> Iterator[None]:
    """A mismatch is evidence too: its logged verdict document is written to ``out`` before the
    error goes on to the caller."""
    try:
        yield
    except ReplayMismatchError as exc:
        if exc.verdict_document:
            write_file(out, exc.verdict_document, what="replay verdict")
            raise ReplayMismatchError(f"{exc} (verdict document in {out})") from None
        raise


def _trust(path: Path) -> TrustBundle:
    return TrustBundle.from_bytes(read_limited(str(path), limit=_MAX_TRUST, what="trust bundle"))


def _external(verdicts: list[Path], trusts: list[Path]) -> list[VerifiedVerdict]:
    """Each verdict document, verified against the pinned trust bundle of the log it names."""
    pins = {t.origin: t for t in map(_trust, trusts)}
    verified = []
    for path in verdicts:
        data = read_limited(str(path), limit=_MAX_VERDICT, what="replay verdict")
        origin = _replaying_log(data, path)
        if origin not in pins:
            raise InputError(f"{path}: no --verdict-trust pins the log {origin!r} it comes from")
        verified.append(verify_replay_verdict(data, trust=pins[origin]))
    return verified


def _replaying_log(data: bytes, path: Path) -> str:
    # Only to pick the pin: verify_replay_verdict checks the origin against it.
    try:
        note = json.loads(data)["checkpoint"]
        return str(note.split("\n", 1)[0])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path} is not a replay verdict document") from None


@audit_app.command("replays")
def _audit_replays(
    verdict: Annotated[
        list[Path] | None,
        typer.Option(help="A replay verdict document from another core (repeatable)."),
    ] = None,
    verdict_trust: Annotated[
        list[Path] | None,
        typer.Option(help="The pinned trust bundle of a log that --verdict comes from."),
    ] = None,
    without_independent: Annotated[
        bool,
        typer.Option("--without-independent", help="Only receipts no other log has reproduced."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    log_database: LogDatabase = None,
) -> None:
    """Receipts with their replay verdicts: which were independently reproduced, which not."""
    external = _external(verdict or [], verdict_trust or [])
    origin = trust_bundle(state_dir, None).origin
    store = open_log(state_dir, log_database)
    try:
        report = replay_report(store, origin, external=external)
    finally:
        store.close()
    rows = [r for r in report.receipts if not (without_independent and r.independently_reproduced)]
    if as_json:
        _print_json(report, rows)
        return
    table = Table("log index", "receipt", "model", "issued at", "replays", "independent", "last")
    for r in rows:
        last = r.replays[-1].verdict if r.replays else "-"
        table.add_row(
            str(r.index),
            r.receipt_id,
            r.model_name,
            r.issued_at,
            str(len(r.replays)),
            "yes" if r.independently_reproduced else "no",
            last,
        )
    print_table(table)
    reproduced = sum(r.independently_reproduced for r in report.receipts)
    console.print(
        f"{len(report.receipts)} receipts, {reproduced} independently reproduced; "
        f"{len(report.foreign)} replays of other logs' receipts recorded here"
    )


def _print_json(report: ReplayReport, rows: list[ReceiptReplays]) -> None:
    sys.stdout.write(
        json.dumps(
            {
                "receipts": [
                    {
                        **dataclasses.asdict(r),
                        "independently_reproduced": r.independently_reproduced,
                    }
                    for r in rows
                ],
                "foreign_replays": report.foreign,
            },
            indent=2,
        )
        + "\n"
    )


@audit_app.command("verify-replay")
def _verify_replay(
    document: Annotated[Path, typer.Argument(help="Replay verdict document.")],
    trust_file: Annotated[
        Path, typer.Option("--trust", help="Pinned trust bundle of the log that replayed.")
    ],
    receipt: Annotated[
        Path | None, typer.Option(help="The receipt the verdict should be about.")
    ] = None,
    receipt_trust: Annotated[
        Path | None,
        typer.Option(
            help="Pinned trust bundle of the log that issued the receipt (default: --trust)."
        ),
    ] = None,
) -> None:
    """Verify a replay verdict offline: logged under a signed checkpoint, about this receipt."""
    verified = verify_replay_verdict(
        read_limited(str(document), limit=_MAX_VERDICT, what="replay verdict"),
        trust=_trust(trust_file),
        receipt=read_limited(str(receipt), limit=MAX_RECEIPT_BYTES, what="receipt")
        if receipt is not None
        else None,
        receipt_trust=_trust(receipt_trust) if receipt_trust is not None else None,
    )
    entry = verified.entry
    kind = "independent replay" if verified.independent else "replay by the issuing log"
    console.print(
        f"[green]OK[/green] {kind}: {verified.verdict} for receipt "
        f"{entry['receipt']['receipt_id']} of {entry['receipt']['log_origin']}, logged at entry "
        f"{verified.index} of {verified.checkpoint.size} in {verified.checkpoint.origin}"
        + ("" if receipt is not None else " (no --receipt given: not matched to a receipt)")
    )
