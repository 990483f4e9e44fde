"""``qward witness init|serve|keys``: a transparency-log witness, run as its own process.

The witness holds its own private keys, so this public command does not import it: each command
checks its arguments here, like every other command, then replaces itself with the witness process
(``python -m qward.witness``), which owns its keys, state and port.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from qward.cli._app import app

__all__: list[str] = []

witness_app = typer.Typer(
    no_args_is_help=True, help="A C2SP tlog-witness with its own keys (its own process)."
)
app.add_typer(witness_app, name="witness")

WitnessDir = Annotated[
    Path,
    typer.Option(
        "--state-dir", help="The witness's own directory (keys, state).", envvar="QWARD_WITNESS_DIR"
    ),
]
_DEFAULT_DIR = Path(".qward-witness")


def _exec_witness(*args: str) -> None:
    command = [sys.executable, "-m", "qward.witness", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)  # noqa: S606 - our own interpreter and module


@witness_app.command("init")
def _init(
    name: Annotated[str, typer.Option(help="Witness name, e.g. witness.example/w1.")],
    state_dir: WitnessDir = _DEFAULT_DIR,
) -> None:
    """Create the witness's Ed25519 and ML-DSA-44 keys and print its verifier keys."""
    _exec_witness("init", "--state-dir", str(state_dir), "--name", name)


@witness_app.command("keys")
def _keys(state_dir: WitnessDir = _DEFAULT_DIR) -> None:
    """Print the witness's verifier keys again (for a log's witnesses.json)."""
    _exec_witness("keys", "--state-dir", str(state_dir))


@witness_app.command("serve")
def _serve(
    log: Annotated[
        list[str], typer.Option(help="Verifier key of a log to witness (repeat for more).")
    ],
    state_dir: WitnessDir = _DEFAULT_DIR,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8100,
) -> None:
    """Serve c2sp.org/tlog-witness add-checkpoint for the logs given."""
    args = ["serve", "--state-dir", str(state_dir), "--host", host, "--port", str(port)]
    for vkey in log:
        args += ["--log", vkey]
    _exec_witness(*args)
