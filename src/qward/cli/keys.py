"""Key administration commands: keys list, rotate, retire, rewrap, report.

These commands hold no key material: each asks the protected core (over its socket) to act on its
own keystore, and the core logs every change and every key use in the transparency log. ``rewrap``
sends the core only an artifact's front (magic, header, key wrap) and splices the new front in
front of the untouched payload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from qward.cli._app import DEFAULT_STATE, StateDir, app, console, print_table, progress_bar, working
from qward.crypto.manifest import KeyState, Purpose, verify_manifest
from qward.crypto.rewrap import read_front, rewrap_file
from qward.errors import FormatError, InputError
from qward.sdk.core_client import CoreClient
from qward.sdk.core_process import core_session
from qward.suites import Policy

__all__: list[str] = []

keys_app = typer.Typer(no_args_is_help=True, help="The core's keys: versions, rotation, rewrap.")
app.add_typer(keys_app, name="keys")


@keys_app.command("list")
def _list(
    root: Annotated[
        str | None, typer.Option(help="Pinned root key id; without it the root is shown.")
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Show every key version, verified against the root-signed key manifest."""
    with core_session(state_dir) as core:
        _, signed = core.call({"op": "keys_list"})
    manifest = verify_manifest(signed, root_key_id=root)
    table = Table("purpose", "version", "state", "suite", "key id")
    for key in sorted(manifest.keys, key=lambda k: (k.purpose.value, k.version)):
        style = {KeyState.PRIMARY: "green", KeyState.RETIRED: "red"}.get(key.state, "")
        table.add_row(
            key.purpose.value,
            str(key.version),
            f"[{style}]{key.state.value}[/{style}]" if style else key.state.value,
            key.suite,
            key.key_id,
        )
    print_table(table)
    console.print(
        f"policy {manifest.policy.value}, manifest serial {manifest.serial}, "
        f"signed by root {manifest.root_key_id} (ML-DSA-87, verified)"
    )


@keys_app.command("rotate")
def _rotate(
    purpose: Annotated[Purpose | None, typer.Argument(help="Which key to rotate.")] = None,
    policy: Annotated[
        Policy | None, typer.Option(help="Switch the suite policy (rotates what it needs).")
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Make a new key version primary; the old one stays enabled for opening and verifying."""
    if (purpose is None) == (policy is None):
        raise InputError("give either a purpose to rotate or --policy")
    header: dict[str, Any] = {"op": "keys_rotate"}
    header.update({"policy": policy.value} if policy else {"purpose": str(purpose)})
    with core_session(state_dir) as core:
        reply, _ = core.call(header)
    if policy:
        rotated = ", ".join(f"{r['purpose']} -> {r['key_id']}" for r in reply["rotated"])
        console.print(f"policy {reply['to_policy']} (rotated: {rotated or 'nothing'})")
    else:
        console.print(
            f"{reply['purpose']}: v{reply['version']} {reply['key_id']} ({reply['suite']}) is "
            f"primary; {reply['previous_key_id']} is enabled"
        )


@keys_app.command("retire")
def _retire(
    key_id: Annotated[str, typer.Argument(help="Key id of a non-primary version.")],
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Retire a key version: it refuses any new use; receipts it signed still verify."""
    with core_session(state_dir) as core:
        reply, _ = core.call({"op": "keys_retire", "key_id": key_id})
    console.print(f"retired {reply['purpose']} v{reply['version']} {reply['key_id']}")


def _sealed_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            try:
                with open(path, "rb") as src:
                    read_front(src)
            except (FormatError, OSError):
                continue
            found.append(path)
    return found


def _rewrap_dir(core: CoreClient, files: list[Path], progress: Progress, task: Any) -> int:
    changed = 0
    for path in files:
        progress.update(task, description=path.name)
        with open(path, "rb") as src:
            front = read_front(src)
        reply, new_front = core.call({"op": "keys_rewrap"}, front.to_bytes())
        if reply["changed"]:
            rewrap_file(path, front, new_front)
            changed += 1
        progress.advance(task)
    return changed


@keys_app.command("rewrap")
def _rewrap(
    directories: Annotated[
        list[Path] | None,
        typer.Argument(help="Directories of sealed artifacts (default: the core's model store)."),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Re-wrap data keys to the primary KEK; payload bytes are left exactly as they are."""
    files = [f for d in directories or [] for f in _sealed_files(d)]
    columns = (TextColumn("rewrap {task.description}"), BarColumn(), MofNCompleteColumn())
    with core_session(state_dir) as core, progress_bar(*columns) as progress:
        if directories:
            task = progress.add_task("", total=len(files))
            changed, total = _rewrap_dir(core, files, progress, task), len(files)
        else:
            models = core.models()
            task = progress.add_task("", total=len(models))
            changed, total = 0, len(models)
            for model in models:
                progress.update(task, description=model["name"])
                reply, _ = core.call(
                    {"op": "keys_rewrap_model", "model_sha256": model["model_sha256"]}
                )
                changed += bool(reply["changed"])
                progress.advance(task)
    console.print(f"rewrapped {changed} of {total} artifacts to the primary KEK")


@keys_app.command("report")
def _report(
    directories: Annotated[
        list[Path] | None,
        typer.Argument(help="More directories to scan (e.g. a model repository)."),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """List artifacts still under a suite the policy does not accept, or a non-primary key."""
    paths = [str(d.resolve()) for d in directories or []]
    with core_session(state_dir) as core, working("scanning for artifacts to migrate"):
        reply, _ = core.call({"op": "keys_report", "directories": paths})
    table = Table("artifact", "kind", "suite", "key id", "why")
    for item in reply["artifacts"]:
        table.add_row(
            item["path"], item["kind"], item["suite"], item["key_id"], "; ".join(item["reasons"])
        )
    print_table(table)
    console.print(f"{len(reply['artifacts'])} artifacts need migration (policy {reply['policy']})")
