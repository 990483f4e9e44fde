"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions`` and ``GET /v1/models``.

Thin handlers: the body becomes a qward generation request, sealed here to the core's key (the
public process never sees a key), generated in the core's sandboxed worker and answered only after
its receipt verifies against the trust bundle. Every answer carries a ``qward`` member: the receipt
bundle, its id and log index, the seed, and the exact token ids the receipt binds (the SDK checks
them: ``qward.sdk.openai_receipts``); headers name the receipt and its SHA-256. Streams are SSE in
OpenAI's chunk format, the receipt arriving in the last chunk before ``[DONE]``; a client that
leaves mid-stream does not stop the generation, which is still receipted and logged.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from qward.core_api import CoreInterface, GenerationResult, TokenChunk
from qward.errors import QwardError
from qward.public.access import caller_may_use
from qward.public.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    generation_request,
)
from qward.public.trust_source import TrustSource
from qward.runtime.llm_profile import GGUF_CONTENT_TYPE
from qward.sdk.client import seal_generation_request
from qward.sdk.core_client import AsyncCoreClient

__all__ = ["ModelForbiddenError", "openai_router"]

# qward's "cancelled" never reaches a client (the core runs every generation to its end).
_FINISH = {"stop": "stop", "length": "length", "cancelled": "length"}


class ModelForbiddenError(QwardError):
    """The token may not use the model named in the body."""

    code = "forbidden"


def openai_router(core: CoreInterface, trust: TrustSource, *, runner: AsyncCoreClient) -> APIRouter:
    """The OpenAI-compatible routes over the core's text generation."""
    router = APIRouter(prefix="/v1", tags=["openai"])

    @router.get("/models")
    def models() -> dict[str, Any]:
        """The registered language models, as OpenAI lists them."""
        listed = [
            {
                "id": m["name"],
                "object": "model",
                "created": 0,
                "owned_by": "qward",
                "qward": {"model_sha256": m["model_sha256"], "ready": m.get("ready", True)},
            }
            for m in core.models()
            if m.get("content_type") == GGUF_CONTENT_TYPE
        ]
        return {"object": "list", "data": listed}

    @router.post("/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        """An attested chat completion (``stream: true`` for SSE)."""
        return await _answer(body, request, "chat.completion")

    @router.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """An attested text completion (``stream: true`` for SSE)."""
        return await _answer(body, request, "text_completion")

    async def _answer(
        body: ChatCompletionRequest | CompletionRequest, request: Request, kind: str
    ) -> Any:
        if not caller_may_use(request, body.model):
            raise ModelForbiddenError(f"this token may not use model {body.model!r}")
        seed = body.drawn_seed()
        current = await run_in_threadpool(trust.current)
        sealed = seal_generation_request(generation_request(body), trust=current)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = _events(runner, trust, body.model, sealed, seed, kind, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        result = await runner.generate(body.model, sealed, seed=seed, by_name=True)
        await run_in_threadpool(trust.check_receipt, result.receipt, trust.current())
        return JSONResponse(
            _completion(kind, body.model, seed, result), headers=_receipt_headers(result)
        )

    return router


def _completion(kind: str, model: str, seed: int, result: GenerationResult) -> dict[str, Any]:
    record = result.record
    text, finish = record["text"], _FINISH[record["finish_reason"]]
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if kind == "chat.completion":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": _id(kind, result.receipt_id),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(record),
        "qward": _qward(seed, result),
    }


def _qward(seed: int, result: GenerationResult) -> dict[str, Any]:
    """What a client needs to verify the answer offline."""
    return {
        "receipt": result.receipt.decode("utf-8"),
        "receipt_id": result.receipt_id,
        "log_index": result.log_index,
        "seed": seed,
        "token_ids": list(result.record["token_ids"]),
    }


def _usage(record: dict[str, Any]) -> dict[str, int]:
    prompt, completion = len(record["prompt_token_ids"]), len(record["token_ids"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _receipt_headers(result: GenerationResult) -> dict[str, str]:
    # A whole receipt (about 12 KB, post-quantum signatures) would strain clients' header limits:
    # the header names it and pins its digest; the body carries it.
    return {
        "X-Qward-Receipt-Id": result.receipt_id,
        "X-Qward-Receipt-SHA256": hashlib.sha256(result.receipt).hexdigest(),
        "X-Qward-Log-Index": str(result.log_index),
    }


def _id(kind: str, receipt_id: str) -> str:
    return ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + receipt_id


@dataclass(frozen=True)
class _Stream:
    """One SSE answer's fixed members: OpenAI repeats them in every chunk."""

    kind: str
    stream_id: str
    created: int
    model: str

    def chunk(self, text: str, finish: str | None, *, first: bool) -> dict[str, Any]:
        """A chunk releasing ``text`` (``finish`` set on the last one)."""
        if self.kind == "chat.completion.chunk":
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {
            "id": self.stream_id,
            "object": self.kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }


async def _events(
    runner: AsyncCoreClient,
    trust: TrustSource,
    model: str,
    sealed: bytes,
    seed: int,
    kind: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """SSE: one chunk per token with text, the final chunk with the receipt, then [DONE]."""
    chat = kind == "chat.completion"
    stream = _Stream(
        kind="chat.completion.chunk" if chat else "text_completion",
        stream_id=_id(kind, secrets.token_hex(16)),
        created=int(time.time()),
        model=model,
    )
    first = True
    try:
        async for item in runner.generate_stream(model, sealed, seed=seed, by_name=True):
            if isinstance(item, TokenChunk):
                if item.text:
                    yield _sse(stream.chunk(item.text, None, first=first))
                    first = False
                continue
            await run_in_threadpool(trust.check_receipt, item.receipt, trust.current())
            final = stream.chunk("", _FINISH[item.record["finish_reason"]], first=first)
            yield _sse({**final, "qward": _qward(seed, item)})
            if include_usage:
                usage = {**stream.chunk("", None, first=False), "usage": _usage(item.record)}
                yield _sse({**usage, "choices": []})
    except QwardError as exc:
        # Headers are sent: the failure goes in the stream, and no receipt is claimed.
        yield _sse({"error": {"message": str(exc), "type": exc.code, "code": exc.code}})
    yield b"data: [DONE]\n\n"


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode("utf-8") + b"\n\n"
