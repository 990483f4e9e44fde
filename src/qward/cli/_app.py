"""The ``qward`` Typer app, its sub-apps, consoles and helpers shared by every command module."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qward.encoding import read_limited
from qward.receipts.trust import TrustBundle

__all__ = [
    "DEFAULT_STATE",
    "MAX_MODEL_FILE",
    "MAX_REQUEST_FILE",
    "StateDir",
    "app",
    "audit_app",
    "console",
    "err_console",
    "example",
    "log_app",
    "token_app",
    "trust_bundle",
]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="qward: quantum-safe, attested, audited model execution.",
)
log_app = typer.Typer(no_args_is_help=True, help="Transparency log tools.")
app.add_typer(log_app, name="log")
token_app = typer.Typer(no_args_is_help=True, help="API tokens for qward serve.")
app.add_typer(token_app, name="token")
audit_app = typer.Typer(
    no_args_is_help=True, help="Query the audit log; export and verify evidence."
)
app.add_typer(audit_app, name="audit")
console = Console()
err_console = Console(stderr=True)

MAX_MODEL_FILE = 1024 * 1024 * 1024
MAX_REQUEST_FILE = 64 * 1024 * 1024
StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Core state directory.", envvar="QWARD_STATE_DIR")
]
DEFAULT_STATE = Path(".qward")


def trust_bundle(state_dir: Path, trust_file: Path | None) -> TrustBundle:
    path = trust_file or state_dir / "trust.json"
    return TrustBundle.from_bytes(read_limited(str(path), limit=256 * 1024, what="trust bundle"))


def example(name: str) -> bytes:
    return resources.files("qward.examples").joinpath(name).read_bytes()
