"""Erasure commands: audit erase (crypto-shred a data subject)."""

from __future__ import annotations

from typing import Annotated

import typer

from qward.cli._app import DEFAULT_STATE, StateDir, audit_app, console, working
from qward.sdk.core_process import core_session

__all__: list[str] = []


@audit_app.command("erase")
def _audit_erase(
    subject: Annotated[
        str, typer.Option(help="The data subject's identifier (as requests name it).")
    ],
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Erase a data subject: log the erasure, then delete the subject's key, so every log field
    sealed under it is unreadable for good while every proof still verifies."""
    with core_session(state_dir) as core, working("erasing"):
        key_id, index = core.erase_subject(subject)
    console.print(
        f"[green]erased[/green] subject key {key_id}: its sealed fields are unreadable from now "
        f"on; the erasure is log entry {index}"
    )
