"""Attested execution commands: demo, seal, run, verify, replay."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from qward.audit import refresh_receipt
from qward.cli._app import (
    DEFAULT_STATE,
    MAX_MODEL_FILE,
    MAX_REQUEST_FILE,
    SoftwareOnlyOption,
    StateDir,
    app,
    console,
    example,
    keep_receipt,
    print_table,
    sealing_trust,
    trust_bundle,
    working,
    writable_path,
    write_file,
)
from qward.cli.chat import check_generation_file, generation_file, replay_generation_receipt
from qward.cli.replays import keep_verdict
from qward.cli.signed_seal import model_signature
from qward.encoding import read_limited, recanonicalize_json
from qward.errors import InputError, VerificationError
from qward.receipts.commitment import SALT_BYTES, check_input
from qward.receipts.receipt import MAX_RECEIPT_BYTES, ReceiptBundle
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import Verifier
from qward.sdk.client import Client, VerifiedRun, seal_model
from qward.sdk.core_process import CoreProcess, core_session
from qward.tensors import tensors_from_json, tensors_to_json

__all__: list[str] = []


@app.command("demo")
def _demo(state_dir: StateDir = DEFAULT_STATE) -> None:
    """Seal the bundled model, run it attested, verify the receipt offline and replay it."""
    core = CoreProcess.start(state_dir)
    try:
        with core.client() as core_client:
            trust = core_client.trust()
            sdk = Client(core_client, trust=trust)
            with working("sealing and registering the example model"):
                info = sdk.register(example("iris-mlp.onnx"), name="iris-mlp")
            inputs, params = tensors_from_json(example("iris-request.json"))
            seed = int(params.get("seed", 0))
            run = sdk.run(info.model_sha256, inputs, seed=seed)
            receipt_path = state_dir / "receipts" / f"{run.verified.bundle.receipt_id}.json"
            receipt_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_file(receipt_path, run.receipt, what="receipt", mode=0o600)
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
    signer = body["signer"].get("suite", "by the log checkpoint that proves it")
    table.add_row("receipt", f"{receipt_path}\nsigned {signer}, verified offline")
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
    attestation = body.get("attestation", {})
    table.add_row(
        "attestation",
        f"{attestation.get('status', 'none')}: no TEE or TPM evidence on this machine "
        "(`qward doctor`)"
        if attestation.get("evidence_format") == "software-only"
        else f"{attestation.get('status', 'none')} ({attestation.get('evidence_format', '-')})",
    )
    table.add_row("replay", verdict)
    print_table(table)
    # One line whatever the terminal: the command must stay copyable.
    console.print(
        f"verify it yourself: qward verify {receipt_path} --state-dir {receipt_path.parent.parent}",
        soft_wrap=True,
    )


@app.command("seal")
def _seal(
    model: Annotated[
        Path, typer.Argument(help="Plaintext ONNX model or qward/circuit/v1 spec to seal.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the sealed model.")
    ],
    trust_file: Annotated[
        Path | None, typer.Option("--trust", help="Pinned trust bundle (default: the state dir's).")
    ] = None,
    allow_software_only: SoftwareOnlyOption = False,
    state_dir: StateDir = DEFAULT_STATE,
    require_signature: Annotated[
        bool, typer.Option("--require-signature", help="Verify a model-signing signature first.")
    ] = False,
    signature: Annotated[
        Path | None, typer.Option("--signature", help="OpenSSF model-signing signature file.")
    ] = None,
    identity: Annotated[
        str | None, typer.Option("--identity", help="Expected signer (key:sha256:... or SAN).")
    ] = None,
    signer_key: Annotated[
        Path | None, typer.Option("--signer-key", help="Pinned EC public key (PEM).")
    ] = None,
    signer_root: Annotated[
        Path | None, typer.Option("--signer-root", help="Pinned root certificate (PEM).")
    ] = None,
) -> None:
    """Seal a model to the core's public key (run by the model owner). A --trust bundle must
    have been pinned by `qward trust fetch` (hardware attestation) unless --allow-software-only.
    With --require-signature the model's OpenSSF model-signing signature is verified first and
    sealed with it, so the core verifies it again."""
    writable_path(output, what="sealed model")
    trust = sealing_trust(state_dir, trust_file, allow_software_only=allow_software_only)
    sig, signer = model_signature(
        model,
        require=require_signature,
        signature=signature,
        identity=identity,
        signer_key=signer_key,
        signer_root=signer_root,
    )
    plaintext = read_limited(str(model), limit=MAX_MODEL_FILE, what="model")
    sealed = seal_model(plaintext, trust=trust, signature=sig, signer=signer)
    write_file(output, sealed, what="sealed model")
    console.print(f"sealed {model} -> {output} ({len(sealed)} bytes)")


@app.command("run")
def _run(
    model: Annotated[
        Path,
        typer.Option(
            "--model", help="Plaintext ONNX model or qward/circuit/v1 spec (sealed locally)."
        ),
    ],
    input_file: Annotated[Path, typer.Option("--input", help="V2 JSON inference request.")],
    receipt_out: Annotated[Path, typer.Option("--receipt", help="Where to write the receipt.")],
    commit_input: Annotated[
        bool,
        typer.Option(
            "--commit-input",
            help="Log only a salted commitment to the input; the salt goes to RECEIPT.salt.",
        ),
    ] = False,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Register a model if needed, run it on a request, and write the verified receipt."""
    # Checked before anything runs: a run is logged, so its receipt must have somewhere to go.
    writable_path(receipt_out, what="receipt")
    if commit_input:
        writable_path(_salt_path(receipt_out), what="input salt")
    model_bytes = read_limited(str(model), limit=MAX_MODEL_FILE, what="model")
    inputs, params = tensors_from_json(
        read_limited(str(input_file), limit=MAX_REQUEST_FILE, what="input")
    )
    seed = params.pop("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError("parameters.seed must be an integer")
    with core_session(state_dir) as core_client:
        sdk = Client(core_client, trust=trust_bundle(state_dir, None))
        digest = hashlib.sha256(model_bytes).hexdigest()
        with working(f"running {model.name} attested"):
            if not any(m["model_sha256"] == digest for m in core_client.models()):
                sdk.register(model_bytes, name=model.stem)
            result = sdk.run(
                digest, inputs, seed=seed, parameters=params, commit_input=commit_input
            )
    keep_receipt(receipt_out, result.receipt, state_dir, result.verified.bundle.receipt_id)
    if result.input_salt is not None:
        _write_salt(_salt_path(receipt_out), result.input_salt)
    console.print_json(
        json.dumps(
            {
                "outputs": tensors_to_json(result.outputs),
                "receipt_id": result.verified.bundle.receipt_id,
                "log_index": result.log_index,
            }
        )
    )


def _is_generation(receipt: bytes) -> bool:
    return "generation" in ReceiptBundle.from_bytes(receipt).body["runtime"]


def _salt_path(receipt: Path) -> Path:
    return receipt.with_name(receipt.name + ".salt")


def _write_salt(path: Path, salt: bytes) -> None:
    # The salt is what turns the receipt's commitment back into a checkable input digest: it
    # stays with the data owner, readable only by them.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(salt.hex() + "\n")


def _read_salt(receipt: Path, given: Path | None) -> bytes | None:
    path = given if given is not None else _salt_path(receipt)
    if given is None and not path.exists():
        return None
    text = read_limited(str(path), limit=256, what="input salt").decode("ascii", "replace")
    try:
        salt = bytes.fromhex(text.strip())
    except ValueError:
        raise InputError(f"{path} does not hold a hex input salt") from None
    if len(salt) != SALT_BYTES:
        raise InputError(f"{path} holds {len(salt)} bytes, not a {SALT_BYTES}-byte input salt")
    return salt


def _refreshed(receipt: bytes, trust: TrustBundle, state_dir: Path) -> bytes:
    from qward.cli.audit import open_log

    store = open_log(state_dir)
    try:
        return refresh_receipt(store, trust, receipt)
    finally:
        store.close()


def _read_receipt(path: Path) -> bytes:
    """A receipt file, re-canonicalised: one run through ``jq .`` must not make it unverifiable
    (the signature is over the canonical body, so this changes nothing it covers)."""
    raw = read_limited(str(path), limit=MAX_RECEIPT_BYTES * 4, what="receipt")
    return recanonicalize_json(raw, what="receipt")


SaltOption = Annotated[
    Path | None,
    typer.Option("--input-salt", help="The input salt file (default: RECEIPT.salt, if it exists)."),
]


@app.command("verify")
def _verify(
    receipt: Annotated[Path, typer.Argument(help="Receipt file to verify offline.")],
    trust_file: Annotated[Path | None, typer.Option("--trust", help="Pinned trust bundle.")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Also check this model.")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", help="Also check this input.")
    ] = None,
    input_salt: SaltOption = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Prove the receipt against the newest witness-cosigned checkpoint in the state "
            "dir's log (for receipts issued before witnesses were configured).",
        ),
    ] = False,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Verify a receipt offline: signatures, inclusion proof and signed checkpoint."""
    trust = trust_bundle(state_dir, trust_file)
    data = _read_receipt(receipt)
    if refresh:
        data = _refreshed(data, trust, state_dir)
    try:
        verified = Verifier(trust=trust).verify(data)
    except VerificationError as exc:
        if refresh or "cosignature" not in str(exc):
            raise
        raise VerificationError(
            f"{exc}; if the receipt was issued before witnesses were configured, "
            "`qward verify --refresh` proves it against a newer cosigned checkpoint"
        ) from None
    if model is not None:
        Verifier.check_model(verified, read_limited(str(model), limit=MAX_MODEL_FILE, what="model"))
    generation = "generation" in verified.body["runtime"]
    if generation and (input_file is not None or generation_file(receipt).exists()):
        check_generation_file(verified.body, input_file or generation_file(receipt))
    elif input_file is not None:
        inputs, _ = tensors_from_json(
            read_limited(str(input_file), limit=MAX_REQUEST_FILE, what="input")
        )
        check_input(verified.body["input"], inputs, _read_salt(receipt, input_salt))
    signature = verified.bundle.signature
    signed_by = f"signature {signature.suite}" if signature else "signed by its checkpoint"
    console.print(
        f"[green]OK[/green] receipt {verified.bundle.receipt_id}: {signed_by}, log entry "
        f"{verified.bundle.index} of {verified.checkpoint.size} in {verified.checkpoint.origin}"
    )


@app.command("replay")
def _replay(
    receipt: Annotated[Path, typer.Argument(help="Receipt to replay.")],
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="The original V2 JSON request (a generation: RECEIPT.generation.json, the "
            "default).",
        ),
    ] = None,
    original_output: Annotated[
        Path | None,
        typer.Option(
            help='The original outputs ({"outputs": [...]} as `qward run` prints '
            "them): allows a tolerance verdict on another platform."
        ),
    ] = None,
    input_salt: SaltOption = None,
    issuer_trust: Annotated[
        Path | None,
        typer.Option(
            help="Pinned trust bundle of the log that issued the receipt, when another core "
            "issued it (an independent replay)."
        ),
    ] = None,
    verdict_out: Annotated[
        Path | None,
        typer.Option(help="Where to keep the replay verdict document (default: next to RECEIPT)."),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Re-run the receipt's model on the same input and seed: bit-identical on the same platform
    and environment, within the declared tolerance elsewhere (given --original-output). The core
    logs the verdict; its document (entry, inclusion proof, checkpoint) is written to
    --verdict-out, also when the verdict is a mismatch."""
    receipt_bytes = _read_receipt(receipt)
    issuer = (
        TrustBundle.from_bytes(read_limited(str(issuer_trust), limit=256 * 1024, what="trust"))
        if issuer_trust is not None
        else None
    )
    out = verdict_out or receipt.with_name(receipt.stem + ".replay-verdict.json")
    writable_path(out, what="replay verdict")
    with keep_verdict(out):
        if _is_generation(receipt_bytes):
            replay_generation_receipt(
                receipt_bytes,
                input_file or generation_file(receipt),
                state_dir,
                issuer_trust=issuer,
                verdict_out=out,
            )
            return
        _replay_tensors(
            receipt,
            receipt_bytes,
            input_file=input_file,
            original_output=original_output,
            input_salt=input_salt,
            issuer=issuer,
            out=out,
            state_dir=state_dir,
        )


def _replay_tensors(
    receipt: Path,
    receipt_bytes: bytes,
    *,
    input_file: Path | None,
    original_output: Path | None,
    input_salt: Path | None,
    issuer: TrustBundle | None,
    out: Path,
    state_dir: Path,
) -> None:
    if input_file is None:
        raise InputError("--input is required: the original request of the run to replay")
    inputs, _ = tensors_from_json(
        read_limited(str(input_file), limit=MAX_REQUEST_FILE, what="input")
    )
    original = None
    if original_output is not None:
        raw = read_limited(str(original_output), limit=MAX_REQUEST_FILE, what="original output")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise InputError(f"{original_output} is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
            raise InputError('original output file needs an "outputs" list')
        original, _ = tensors_from_json(json.dumps({"inputs": doc["outputs"]}).encode())
    with core_session(state_dir) as core_client, working("replaying"):
        result = Client(core_client, trust=trust_bundle(state_dir, None)).replay(
            receipt_bytes,
            inputs,
            original_outputs=original,
            input_salt=_read_salt(receipt, input_salt),
            issuer_trust=issuer,
        )
    write_file(out, result.verdict_document, what="replay verdict")
    console.print(
        f"[green]{result.verdict}[/green]: output sha256 {result.output_sha256}"
        f"{'' if result.same_environment else ' (different platform or environment)'}; "
        f"verdict logged at entry {result.log_index}, document in {out}"
    )
