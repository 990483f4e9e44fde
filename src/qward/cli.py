"""The ``qward`` command. It is public code: it never imports ``qward.protected``.

Every command resolves its errors in one place, ``main``: a ``QwardError`` becomes one line on
stderr and an exit code (1 verification failed, 2 bad input, 3 core or runtime failure), never a
traceback.
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from qward.audit import export_evidence, query_runs, verify_evidence
from qward.auth import TOKEN_FILE, TokenStore
from qward.client import Client, VerifiedRun, seal_model
from qward.core_process import CoreProcess, core_session
from qward.encoding import read_limited
from qward.errors import (
    CoreUnavailableError,
    FormatError,
    InputError,
    QwardError,
    RuntimeFailure,
    VerificationError,
)
from qward.http_client import HTTPClient
from qward.receipts.receipt import MAX_RECEIPT_BYTES
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import Verifier
from qward.tensors import tensors_digest, tensors_from_json, tensors_to_json
from qward.tlog.store import SQLiteLogStore

__all__ = ["app", "main"]

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
_DEFAULT_STATE = Path(".qward")


def _trust(state_dir: Path, trust_file: Path | None) -> TrustBundle:
    path = trust_file or state_dir / "trust.json"
    return TrustBundle.from_bytes(read_limited(str(path), limit=256 * 1024, what="trust bundle"))


def _example(name: str) -> bytes:
    return resources.files("qward.examples").joinpath(name).read_bytes()


@app.command("demo")
def _demo(state_dir: StateDir = _DEFAULT_STATE) -> None:
    """Seal the bundled model, run it attested, verify the receipt offline and replay it."""
    core = CoreProcess.start(state_dir)
    try:
        with core.client() as core_client:
            trust = core_client.trust()
            sdk = Client(core_client, trust=trust)
            with console.status("sealing and registering the example model"):
                info = sdk.register(_example("iris-mlp.onnx"), name="iris-mlp")
            inputs, params = tensors_from_json(_example("iris-request.json"))
            seed = int(params.get("seed", 0))
            run = sdk.run(info.model_sha256, inputs, seed=seed)
            receipt_path = state_dir / "receipts" / f"{run.verified.bundle.receipt_id}.json"
            receipt_path.parent.mkdir(parents=True, exist_ok=True)
            receipt_path.write_bytes(run.receipt)
            replay = sdk.replay(run.receipt, inputs)
    finally:
        core.stop()
    _print_run(info.isolation, run, receipt_path, replay.verdict)


def _print_run(
    isolation: dict[str, Any], run: VerifiedRun, receipt_path: Path, verdict: str
) -> None:
    body = run.verified.body
    table = Table(title="qward demo: attested run of the bundled iris model", show_header=False)
    table.add_row("model", f"{body['model']['name']}  sha256 {body['model']['sha256']}")
    table.add_row("input", f"sha256 {body['input']['sha256']}  seed {body['seed']}")
    for tensor in run.outputs:
        values = np.array2string(tensor.to_numpy(), precision=4, suppress_small=True)
        table.add_row(f"output {tensor.name}", f"{tensor.datatype}{list(tensor.shape)} {values}")
    table.add_row("output sha256", body["output"]["sha256"])
    table.add_row("receipt", f"{receipt_path}\nsigned {body['signer']['suite']}, verified offline")
    table.add_row(
        "log",
        f"entry {run.log_index} of {run.verified.checkpoint.size} in "
        f"{run.verified.checkpoint.origin} (Ed25519 + ML-DSA-44 checkpoint)",
    )
    layers = [n for n, layer in isolation["layers"].items() if layer["enforced"]]
    degraded = isolation.get("degraded") or []
    table.add_row(
        "isolation",
        f"enforced: {', '.join(layers)}\ndegraded: {', '.join(degraded) if degraded else 'none'}",
    )
    table.add_row("replay", verdict)
    console.print(table)
    console.print(
        f"verify it yourself: qward verify {receipt_path} --state-dir {receipt_path.parent.parent}"
    )


@app.command("seal")
def _seal(
    model: Annotated[Path, typer.Argument(help="Plaintext ONNX model to seal.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the sealed model.")
    ],
    trust_file: Annotated[Path | None, typer.Option("--trust")] = None,
    state_dir: StateDir = _DEFAULT_STATE,
) -> None:
    """Seal a model to the core's public key (run by the model owner)."""
    sealed = seal_model(
        read_limited(str(model), limit=MAX_MODEL_FILE, what="model"),
        trust=_trust(state_dir, trust_file),
    )
    output.write_bytes(sealed)
    console.print(f"sealed {model} -> {output} ({len(sealed)} bytes)")


@app.command("run")
def _run(
    model: Annotated[Path, typer.Option("--model", help="Plaintext ONNX model (sealed locally).")],
    input_file: Annotated[Path, typer.Option("--input", help="V2 JSON inference request.")],
    receipt_out: Annotated[Path, typer.Option("--receipt", help="Where to write the receipt.")],
    state_dir: StateDir = _DEFAULT_STATE,
) -> None:
    """Register a model if needed, run it on a request, and write the verified receipt."""
    model_bytes = read_limited(str(model), limit=MAX_MODEL_FILE, what="model")
    inputs, params = tensors_from_json(
        read_limited(str(input_file), limit=MAX_REQUEST_FILE, what="input")
    )
    seed = params.pop("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError("parameters.seed must be an integer")
    with core_session(state_dir) as core_client:
        sdk = Client(core_client, trust=_trust(state_dir, None))
        digest = hashlib.sha256(model_bytes).hexdigest()
        if not any(m["model_sha256"] == digest for m in core_client.models()):
            sdk.register(model_bytes, name=model.stem)
        result = sdk.run(digest, inputs, seed=seed, parameters=params)
    receipt_out.write_bytes(result.receipt)
    console.print_json(
        json.dumps(
            {
                "outputs": tensors_to_json(result.outputs),
                "receipt_id": result.verified.bundle.receipt_id,
                "log_index": result.log_index,
            }
        )
    )


@app.command("verify")
def _verify(
    receipt: Annotated[Path, typer.Argument(help="Receipt file to verify offline.")],
    trust_file: Annotated[Path | None, typer.Option("--trust", help="Pinned trust bundle.")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Also check this model.")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", help="Also check this input.")
    ] = None,
    state_dir: StateDir = _DEFAULT_STATE,
) -> None:
    """Verify a receipt offline: signatures, inclusion proof and signed checkpoint."""
    verified = Verifier(trust=_trust(state_dir, trust_file)).verify(
        read_limited(str(receipt), limit=MAX_RECEIPT_BYTES, what="receipt")
    )
    if model is not None:
        Verifier.check_model(verified, read_limited(str(model), limit=MAX_MODEL_FILE, what="model"))
    if input_file is not None:
        inputs, _ = tensors_from_json(
            read_limited(str(input_file), limit=MAX_REQUEST_FILE, what="input")
        )
        if tensors_digest(inputs) != verified.body["input"]["sha256"]:
            raise VerificationError("the input file is not the input this receipt records")
    console.print(
        f"[green]OK[/green] receipt {verified.bundle.receipt_id}: signature "
        f"{verified.bundle.signature.suite}, log entry {verified.bundle.index} of "
        f"{verified.checkpoint.size} in {verified.checkpoint.origin}"
    )


@app.command("replay")
def _replay(
    receipt: Annotated[Path, typer.Argument(help="Receipt to replay.")],
    input_file: Annotated[Path, typer.Option("--input", help="The original V2 JSON request.")],
    state_dir: StateDir = _DEFAULT_STATE,
) -> None:
    """Re-run the receipt's model on the same input and seed; succeed only on identical bytes."""
    receipt_bytes = read_limited(str(receipt), limit=MAX_RECEIPT_BYTES, what="receipt")
    inputs, _ = tensors_from_json(
        read_limited(str(input_file), limit=MAX_REQUEST_FILE, what="input")
    )
    with core_session(state_dir) as core_client:
        result = Client(core_client, trust=_trust(state_dir, None)).replay(receipt_bytes, inputs)
    console.print(f"[green]{result.verdict}[/green]: output sha256 {result.output_sha256}")


@log_app.command("verify")
def _log_verify(state_dir: StateDir = _DEFAULT_STATE) -> None:
    """Recompute the whole log from its entries and check every checkpoint."""
    from qward.tlog.audit import verify_log

    trust = _trust(state_dir, None)
    path = state_dir / "log.sqlite"
    if not path.exists():
        raise InputError(f"no log at {path}")
    store = SQLiteLogStore.open(path)
    try:
        report = verify_log(store, origin=trust.origin, verifiers=trust.log_verifiers)
    finally:
        store.close()
    console.print(
        f"[green]OK[/green] {report.entries} entries, {report.checkpoints} checkpoints "
        f"verified in {report.seconds:.3f} s"
    )


def _open_log(state_dir: Path) -> SQLiteLogStore:
    path = state_dir / "log.sqlite"
    if not path.exists():
        raise InputError(f"no log at {path}")
    return SQLiteLogStore.open(path)


@audit_app.command("query")
def _audit_query(
    model: Annotated[str | None, typer.Option(help="Model name or sha256.")] = None,
    caller: Annotated[str | None, typer.Option(help="Token id of the caller.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-24T00:00:00Z.")] = None,
    state_dir: StateDir = _DEFAULT_STATE,
) -> None:
    """Who ran which model on which input digest, and when."""
    store = _open_log(state_dir)
    try:
        records = query_runs(store, model=model, caller=caller, since=since)
    finally:
        store.close()
    table = Table("log index", "issued at", "caller", "model", "input sha256", "output sha256")
    for r in records:
        table.add_row(
            str(r.index),
            r.issued_at,
            r.caller or "-",
            r.model_name,
            r.input_sha256[:16],
            r.output_sha256[:16],
        )
    console.print(table)
    console.print(f"{len(records)} runs")


@audit_app.command("export")
def _audit_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Evidence bundle to write.")],
    model: Annotated[str | None, typer.Option(help="Only runs of this model.")] = None,
    caller: Annotated[str | None, typer.Option(help="Only runs by this token id.")] = None,
    state_dir: StateDir = _DEFAULT_STATE,
) -> None:
    """Write an evidence bundle (receipts, proofs, checkpoint, public keys) for offline checks."""
    store = _open_log(state_dir)
    try:
        runs = query_runs(store, model=model, caller=caller)
        bundle = export_evidence(store, _trust(state_dir, None), [r.index for r in runs])
    finally:
        store.close()
    output.write_bytes(bundle)
    console.print(f"wrote {output}: {len(runs)} receipts with inclusion proofs")


@audit_app.command("verify")
def _audit_verify(
    bundle: Annotated[Path, typer.Argument(help="Evidence bundle.")],
    trust_file: Annotated[Path, typer.Option("--trust", help="Pinned trust bundle.")],
) -> None:
    """Verify an evidence bundle offline against a pinned trust bundle."""
    trust = TrustBundle.from_bytes(read_limited(str(trust_file), limit=256 * 1024, what="trust"))
    report = verify_evidence(
        read_limited(str(bundle), limit=256 * 1024 * 1024, what="bundle"), trust=trust
    )
    console.print(
        f"[green]OK[/green] {report.entries} entries ({report.receipts} receipts) "
        f"proved against checkpoint {report.checkpoint.size} of {report.checkpoint.origin}"
    )


@token_app.command("create")
def _token_create(
    role: Annotated[str, typer.Option(help="client, auditor or admin.")],
    model: Annotated[
        list[str] | None, typer.Option(help="Model a client may use (repeat).")
    ] = None,
    state_dir: StateDir = _DEFAULT_STATE,
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
    state_dir: StateDir = _DEFAULT_STATE,
) -> None:
    """Seal a model locally and upload it to a remote qward serve, with a progress bar."""
    data = read_limited(str(model), limit=MAX_MODEL_FILE, what="model")
    trust = _trust(state_dir, trust_file)
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
    state_dir: StateDir = _DEFAULT_STATE,
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
) -> None:
    """Start the protected core and the public HTTP API in front of it."""
    import uvicorn

    from qward.server import create_app

    core = CoreProcess.start(state_dir)
    try:
        app = create_app(
            state_dir,
            model_repository=model_repository,
            allow_model_upload=allow_model_upload,
            unsafe_no_auth=unsafe_no_auth,
        )
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        core.stop()


_EXIT_CODES: list[tuple[type[QwardError], int]] = [
    (VerificationError, 1),
    (FormatError, 1),
    (InputError, 2),
    (CoreUnavailableError, 3),
    (RuntimeFailure, 3),
]


def main() -> None:
    """Console entry point: run the app and map errors to exit codes."""
    try:
        app(standalone_mode=False)
    except QwardError as exc:
        code = next((c for cls, c in _EXIT_CODES if isinstance(exc, cls)), 3)
        err_console.print(f"[red]error[/red] ({exc.code}): {exc}")
        sys.exit(code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
