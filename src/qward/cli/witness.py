"""``qward witness init|serve``: runs the witness as its own process (``python -m qward.witness``).

The witness holds its own private keys, so this public command does not import it: it replaces
itself with the witness process, which then owns its keys, state and port.
"""

from __future__ import annotations

import os
import sys

import typer

from qward.cli._app import app

__all__: list[str] = []


@app.command(
    "witness",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def _witness(ctx: typer.Context) -> None:
    """Run a transparency-log witness: `init --state-dir D --name N`, or `serve --state-dir D
    --port P --log VKEY...` (c2sp.org/tlog-witness add-checkpoint)."""
    command = [sys.executable, "-m", "qward.witness", *ctx.args]
    sys.stdout.flush()
    os.execv(sys.executable, command)  # noqa: S606 - our own interpreter and module
