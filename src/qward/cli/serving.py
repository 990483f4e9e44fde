"""Serving commands: token create, upload, serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from qward.cli._app import (
    DEFAULT_STATE,
    MAX_MODEL_FILE,
    StateDir,
    app,
    console,
    err_console,
    token_app,
    trust_bundle,
)
from qward.encoding import read_limited
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.sdk.core_process import core_session
from qward.sdk.http_client import HTTPClient

__all__: list[str] = []


@token_app.command("create")
def _token_create(
    role: Annotated[str, typer.Option(help="client, auditor or admin.")],
    model: Annotated[
        list[str] | None, typer.Option(help="Model a client may use (repeat).")
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Create an API token; it is printed once and only its SHA-256 is stored."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token, principal = TokenStore(state_dir / TOKEN_FILE).create(
        role=role, models=tuple(model or ())
    )
    with core_session(state_dir) as core_client:
        core_client.record_admin(
            "token-created", token_id=principal.token_id, role=role, models=list(principal.models)
        )
    err_console.print(
        f"token {principal.token_id} ({role}, models: {', '.join(principal.models)})"
        " — shown once, store it now:"
    )
    print(token)


@app.command("upload")
def _upload(
    model: Annotated[Path, typer.Argument(help="Plaintext ONNX model; sealed before it leaves.")],
    name: Annotated[str, typer.Option(help="Name to register the model under.")],
    url: Annotated[str, typer.Option(help="Base URL of qward serve.")] = "http://127.0.0.1:8000",
    trust_file: Annotated[Path | None, typer.Option("--trust", help="Pinned trust bundle.")] = None,
    token: Annotated[
        str, typer.Option(envvar="QWARD_TOKEN", help="Admin token (env QWARD_TOKEN).")
    ] = "",
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Seal a model locally and upload it to a remote qward serve, with a progress bar."""
    data = read_limited(str(model), limit=MAX_MODEL_FILE, what="model")
    trust = trust_bundle(state_dir, trust_file)
    with (
        HTTPClient(url, token=token, trust=trust) as client,
        Progress(
            TextColumn("uploading {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err_console,
        ) as progress,
    ):
        task = progress.add_task(model.name, total=len(data) + 65536)
        digest = client.upload_model(data, name=name, progress=lambda n: progress.advance(task, n))
        progress.update(task, completed=progress.tasks[task].total)
    console.print(f"registered {name}: model sha256 {digest}")


@app.command("serve")
def _serve(
    state_dir: StateDir = DEFAULT_STATE,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    model_repository: Annotated[
        Path | None, typer.Option(help="Directory of sealed models: <name>/model.sealed.")
    ] = None,
    allow_model_upload: Annotated[
        bool, typer.Option(help="Let admins upload sealed models with POST /v1/models.")
    ] = False,
    unsafe_no_auth: Annotated[
        bool, typer.Option(help="UNSAFE: serve without token authentication.")
    ] = False,
    core_user: Annotated[str, typer.Option(help="User the core runs as (root only).")] = (
        "qward-core"
    ),
    api_user: Annotated[str, typer.Option(help="User the public server runs as (root only).")] = (
        "qward-api"
    ),
    worker_user: Annotated[str, typer.Option(help="User workers run as (root only).")] = (
        "qward-worker"
    ),
    admin_uid: Annotated[
        list[int] | None, typer.Option(help="Extra uid allowed the core's admin operations.")
    ] = None,
    keystore_passphrase_file: Annotated[
        Path | None,
        typer.Option(
            envvar="QWARD_KEYSTORE_PASSPHRASE_FILE",
            help="File with the keystore passphrase, readable by the core's user only.",
        ),
    ] = None,
    pkcs11_pin_file: Annotated[
        Path | None,
        typer.Option(
            envvar="QWARD_PKCS11_PIN_FILE",
            help="File with the PKCS#11 user PIN, readable by the core's user only.",
        ),
    ] = None,
    unsafe_single_user: Annotated[
        bool,
        typer.Option(
            envvar="QWARD_UNSAFE_SINGLE_USER",
            help="UNSAFE: as root, run every process as root (no privilege separation).",
        ),
    ] = False,
) -> None:
    """Start the protected core and the public HTTP API, and supervise both.

    As root, the core, the public server and the workers run as three distinct system users.
    """
    from qward.cli.launcher import Launcher, ServeOptions

    options = ServeOptions(
        state_dir=state_dir,
        host=host,
        port=port,
        model_repository=model_repository,
        allow_model_upload=allow_model_upload,
        unsafe_no_auth=unsafe_no_auth,
        core_user=core_user,
        api_user=api_user,
        worker_user=worker_user,
        admin_uids=tuple(admin_uid or ()),
        passphrase_file=keystore_passphrase_file,
        pin_file=pkcs11_pin_file,
        unsafe_single_user=unsafe_single_user,
    )
    raise typer.Exit(Launcher(options).run())
