"""The ``qward`` Typer app, its sub-apps, consoles and helpers shared by every command module."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress, ProgressColumn
from rich.table import Table

from qward import __version__
from qward.attestation.appraisal import AFFIRMING
from qward.encoding import read_limited
from qward.errors import InputError
from qward.receipts.trust import TrustBundle
from qward.sdk.attested_trust import require_attested

__all__ = [
    "DEFAULT_STATE",
    "MAX_MODEL_FILE",
    "MAX_REQUEST_FILE",
    "SoftwareOnlyOption",
    "StateDir",
    "app",
    "audit_app",
    "console",
    "err_console",
    "example",
    "fail",
    "keep_receipt",
    "log_app",
    "one_line",
    "print_table",
    "progress_bar",
    "sealing_trust",
    "token_app",
    "trust_bundle",
    "working",
    "writable_path",
    "write_file",
]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help text: the same on a terminal and in a pipe, no box drawing, no type badges.
    rich_markup_mode=None,
    help="qward: quantum-safe, attested, audited model execution.",
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"qward {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """qward: quantum-safe, attested, audited model execution."""


log_app = typer.Typer(no_args_is_help=True, help="Transparency log tools.")
app.add_typer(log_app, name="log")
token_app = typer.Typer(no_args_is_help=True, help="API tokens for qward serve.")
app.add_typer(token_app, name="token")
audit_app = typer.Typer(
    no_args_is_help=True, help="Query the audit log; export and verify evidence."
)
app.add_typer(audit_app, name="audit")
# Output never depends on the terminal: lines are not wrapped at the width rich guesses when
# stdout or stderr is a pipe (80 columns), so a path or a command stays whole and greppable.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
_PIPE_WIDTH = 100_000

MAX_MODEL_FILE = 1024 * 1024 * 1024
MAX_REQUEST_FILE = 64 * 1024 * 1024
StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Core state directory.", envvar="QWARD_STATE_DIR")
]
DEFAULT_STATE = Path(".qward")


def trust_bundle(state_dir: Path, trust_file: Path | None) -> TrustBundle:
    """``trust_file``, or the trust bundle the core wrote into ``state_dir``."""
    path = trust_file or state_dir / "trust.json"
    return TrustBundle.from_bytes(read_limited(str(path), limit=256 * 1024, what="trust bundle"))


def sealing_trust(
    state_dir: Path, trust_file: Path | None, *, allow_software_only: bool
) -> TrustBundle:
    """The trust bundle to seal to. The state directory's was written by the core on this
    machine; a bundle from anywhere else must carry an affirming appraisal
    (``qward trust fetch``), unless ``allow_software_only``."""
    trust = trust_bundle(state_dir, trust_file)
    if trust_file is not None:
        status = require_attested(trust, allow_software_only=allow_software_only)
        if status != AFFIRMING:
            err_console.print(
                f"qward: WARNING sealing to a core no hardware attestation proves "
                f"(appraisal: {status}; accepted with --allow-software-only)"
            )
    return trust


SoftwareOnlyOption = Annotated[
    bool,
    typer.Option(
        "--allow-software-only",
        help="Accept a trust bundle no hardware attestation proves (warned; unsafe).",
    ),
]


def example(name: str) -> bytes:
    return resources.files("qward.examples").joinpath(name).read_bytes()


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(text.split())


def fail(code: str, message: str, exit_code: int) -> NoReturn:
    """Print ``error (code): message`` as exactly one line on stderr and exit."""
    sys.stdout.flush()
    sys.stderr.write(f"error ({code}): {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(exit_code)


def writable_path(path: Path, *, what: str) -> Path:
    """Check, before any work is done, that ``path`` can be written: its directory exists and is
    writable, and ``path`` itself is not a directory. Raises ``InputError`` naming the problem."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; give a file name")
    if not parent.is_dir():
        raise InputError(f"{what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {path} exists and is not writable")
    return path


def write_file(path: Path, data: bytes, *, what: str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` (checked first with ``writable_path``); a failure is an
    ``InputError`` naming the path."""
    writable_path(path, what=what)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise InputError(f"cannot write {what} {path}: {exc.strerror}") from None


def progress_bar(*columns: str | ProgressColumn) -> Progress:
    """A progress bar on stderr, drawn only on a terminal (a pipe gets no bar lines)."""
    return Progress(*columns, console=err_console, disable=not err_console.is_terminal)


@contextlib.contextmanager
def working(message: str) -> Iterator[None]:
    """A spinner on stderr while a step that may take seconds runs (only on a terminal)."""
    if not err_console.is_terminal:
        yield
        return
    with err_console.status(message):
        yield


def print_table(table: Table) -> None:
    """Print ``table`` on stdout; in a pipe at its natural width, never cut to 80 columns."""
    if console.is_terminal:
        console.print(table)
        return
    # rich caps a print's ``width`` at the console's own (80 in a pipe): widen the console.
    saved = console.width
    console.width = _PIPE_WIDTH
    try:
        console.print(table, crop=False)
    finally:
        console.width = saved


def keep_receipt(path: Path, receipt: bytes, state_dir: Path, receipt_id: str) -> None:
    """Write a signed, logged receipt; if ``path`` fails, keep it in the state directory and
    say where, so a receipt is never lost."""
    try:
        write_file(path, receipt, what="receipt")
    except InputError as exc:
        fallback = state_dir / "receipts" / f"{receipt_id}.json"
        fallback.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(fallback, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(receipt)
        raise InputError(f"{exc}; the receipt was kept at {fallback}") from None
