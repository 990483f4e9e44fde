"""``qward cluster``: set up several protected cores that share one PostgreSQL log.

``log-identity`` makes the file every core of the log signs checkpoints with; it holds a private
key, so this public command does not create it itself: it replaces itself with the core's own
module (``python -m qward.protected.log_identity``). ``trust`` merges the cores' trust bundles
into one that verifies receipts from any of them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from qward.cli._app import app, writable_path, write_file
from qward.encoding import read_limited
from qward.errors import InputError
from qward.receipts.cluster_trust import merge_trust
from qward.receipts.trust import TrustBundle

__all__: list[str] = []

cluster_app = typer.Typer(
    no_args_is_help=True, help="Several protected cores sharing one PostgreSQL transparency log."
)
app.add_typer(cluster_app, name="cluster")

_MAX_TRUST_BYTES = 4 * 1024 * 1024


@cluster_app.command("log-identity")
def _log_identity(
    out: Annotated[Path, typer.Option(help="Where to write the identity (a new file, 0600).")],
    origin: Annotated[
        str | None, typer.Option(help="The log's origin line (default: a random one).")
    ] = None,
) -> None:
    """Create the log identity (origin and checkpoint key) every core of one log is given."""
    writable_path(out, what="log identity")
    if out.exists():
        raise InputError(f"log identity {out} exists; a log identity is never overwritten")
    command = [sys.executable, "-m", "qward.protected.log_identity", "create", "--out", str(out)]
    if origin is not None:
        command += ["--origin", origin]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)  # noqa: S606 - our own interpreter and module


@cluster_app.command("trust")
def _trust(
    core: Annotated[list[Path], typer.Option(help="A core's trust.json (repeat: one per core).")],
    out: Annotated[Path, typer.Option(help="Where to write the merged trust bundle.")],
) -> None:
    """Merge the cores' trust bundles: one bundle that verifies receipts from any of them."""
    writable_path(out, what="merged trust bundle")
    if not core:
        raise InputError("name each core's trust.json with --core")
    bundles = [
        TrustBundle.from_bytes(read_limited(str(p), limit=_MAX_TRUST_BYTES, what="trust bundle"))
        for p in core
    ]
    merged = merge_trust(bundles)
    write_file(out, merged.to_bytes(), what="merged trust bundle")
    typer.echo(
        f"{out}: log {merged.origin}, {len(merged.receipt_keys)} receipt keys from "
        f"{len(bundles)} cores"
    )
