"""``qward chat``: an attested text generation with a GGUF model on the local core.

The request (prompt or chat, sampling parameters) is sealed to the core, generated in a sandboxed
worker, and the receipt is verified against the core's trust bundle and the returned token ids
before anything is printed. Beside the receipt, ``RECEIPT.generation.json`` (mode 0600: it holds
the prompt) keeps the request and the token ids, so ``qward replay RECEIPT`` can regenerate and
compare token for token and ``qward verify RECEIPT`` can check the text.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from qward.cli._app import (
    DEFAULT_STATE,
    MAX_MODEL_FILE,
    StateDir,
    app,
    console,
    keep_receipt,
    trust_bundle,
    working,
    writable_path,
    write_file,
)
from qward.encoding import canonical_json, parse_canonical_json, read_limited
from qward.errors import InputError
from qward.receipts.generation import check_completion
from qward.receipts.trust import TrustBundle
from qward.sdk.client import Client, VerifiedGeneration
from qward.sdk.core_client import CoreClient
from qward.sdk.core_process import core_session
from qward.sdk.example_llm import EXAMPLE_LLM_NAME, example_llm_model, example_llm_template

__all__ = [
    "check_generation_file",
    "generation_file",
    "read_generation_file",
    "replay_generation_receipt",
]

_MAX_COMPANION = 4 * 1024 * 1024


def generation_file(receipt: Path) -> Path:
    """Where the request and token ids of ``receipt`` are kept."""
    return receipt.with_name(receipt.name + ".generation.json")


@app.command("chat")
def _chat(
    prompt: Annotated[
        str, typer.Argument(help="The user's message (or, with --completion, text).")
    ],
    model: Annotated[
        str,
        typer.Option(help="A registered language model, the example's name, or a GGUF file."),
    ] = EXAMPLE_LLM_NAME,
    system: Annotated[str | None, typer.Option(help="A system message first.")] = None,
    completion: Annotated[
        bool, typer.Option("--completion", help="Continue PROMPT as plain text (no chat).")
    ] = False,
    seed: Annotated[int, typer.Option(min=0, help="Sampling seed (recorded).")] = 0,
    max_tokens: Annotated[
        int, typer.Option(min=1, max=2048, help="At most this many tokens.")
    ] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 is greedy.")] = 0.0,
    chat_template: Annotated[
        Path | None,
        typer.Option(help="Jinja chat template for a GGUF file that carries none."),
    ] = None,
    receipt_out: Annotated[Path, typer.Option("--receipt", help="Where to write the receipt.")] = (
        Path("chat.receipt.json")
    ),
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Run an attested generation and write its verified receipt."""
    writable_path(receipt_out, what="receipt")
    writable_path(generation_file(receipt_out), what="generation record")
    request = _request(prompt, system, completion=completion, max_tokens=max_tokens, t=temperature)
    with core_session(state_dir) as core:
        sdk = Client(core, trust=trust_bundle(state_dir, None))
        name = _ensure_model(core, sdk, model, chat_template)
        with working(f"generating with {name} (attested)"):
            result = sdk.generate(name, request, seed=seed)
    receipt_id = result.verified.bundle.receipt_id
    keep_receipt(receipt_out, result.receipt, state_dir, receipt_id)
    _write_generation(generation_file(receipt_out), request, result)
    console.print(result.text, markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"receipt {receipt_id} -> {receipt_out} (log entry {result.verified.bundle.index}, "
        f"{len(result.record['token_ids'])} tokens, {result.record['finish_reason']}); "
        f"replay: qward replay {receipt_out} --state-dir {state_dir}",
        soft_wrap=True,
    )


def _request(
    prompt: str, system: str | None, *, completion: bool, max_tokens: int, t: float
) -> dict[str, Any]:
    parameters = {"temperature": float(t).hex(), "max_tokens": max_tokens}
    if completion:
        if system is not None:
            raise InputError("--system is for chat, not --completion")
        return {"mode": "completion", "prompt": prompt, "parameters": parameters}
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    return {"mode": "chat", "messages": messages, "parameters": parameters}


def _ensure_model(core: CoreClient, sdk: Client, model: str, template: Path | None) -> str:
    """The registered name to generate with, registering the example or a GGUF file first."""
    registered = {m["name"] for m in core.models()}
    path = Path(model)
    if model in registered and not path.is_file():
        return model
    chat_template = (
        read_limited(str(template), limit=64 * 1024, what="chat template").decode("utf-8")
        if template is not None
        else None
    )
    if model == EXAMPLE_LLM_NAME and not path.is_file():
        data, name = example_llm_model(), EXAMPLE_LLM_NAME
        chat_template = chat_template or example_llm_template()
    elif path.is_file():
        data, name = read_limited(model, limit=MAX_MODEL_FILE, what="model"), path.stem
    else:
        raise InputError(f"no model {model!r}: not registered with this core and not a file")
    digest = hashlib.sha256(data).hexdigest()
    if not any(m["model_sha256"] == digest for m in core.models()):
        with working(f"sealing and registering {name}"):
            sdk.register(data, name=name, chat_template=chat_template)
    return name


def _write_generation(path: Path, request: dict[str, Any], result: VerifiedGeneration) -> None:
    # It holds the prompt: readable by its owner only, like an input salt.
    record = {
        "request": request,
        "token_ids": result.record["token_ids"],
        "text": result.record["text"],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(canonical_json(record))


def read_generation_file(path: Path) -> dict[str, Any]:
    """The request, token ids and text kept beside a generation receipt."""
    if not path.exists():
        raise InputError(f"{path} is missing: it holds the request a generation replay needs")
    doc = parse_canonical_json(
        read_limited(str(path), limit=_MAX_COMPANION, what="generation record"),
        what="generation record",
    )
    if not isinstance(doc.get("request"), dict) or not isinstance(doc.get("token_ids"), list):
        raise InputError(f"{path} does not hold a request and token ids")
    return doc


def check_generation_file(body: dict[str, Any], path: Path) -> None:
    """Check that the text and token ids kept in ``path`` are what the receipt binds."""
    doc = read_generation_file(path)
    check_completion(body, token_ids=doc["token_ids"], text=str(doc.get("text", "")))
    if hashlib.sha256(canonical_json(doc["request"])).hexdigest() != body["input"]["sha256"]:
        raise InputError(f"{path} holds another request than the receipt names")


def replay_generation_receipt(
    receipt: bytes,
    companion: Path,
    state_dir: Path,
    *,
    issuer_trust: TrustBundle | None,
    verdict_out: Path,
) -> None:
    """``qward replay`` for a generation receipt: regenerate and compare token for token; the
    logged verdict's document goes to ``verdict_out``."""
    doc = read_generation_file(companion)
    with core_session(state_dir) as core, working("replaying the generation"):
        result = Client(core, trust=trust_bundle(state_dir, None)).replay_generation(
            receipt,
            doc["request"],
            original_token_ids=doc["token_ids"],
            issuer_trust=issuer_trust,
        )
    write_file(verdict_out, result.verdict_document, what="replay verdict")
    console.print(
        f"[green]{result.verdict}[/green]: {len(result.record['token_ids'])} token ids, "
        f"output sha256 {result.output_sha256}; verdict logged at entry {result.log_index}, "
        f"document in {verdict_out}"
    )
