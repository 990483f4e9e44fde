"""OpenAI-compatible request bodies, and the qward generation request each becomes.

Only what qward can honour deterministically is accepted; every other OpenAI parameter (tools,
logprobs, response_format, penalties other than zero, ``n`` above one, ...) is refused by name,
because silently ignoring it would receipt something other than what was asked.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qward.errors import InputError

__all__ = [
    "MAX_SEED",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "StreamOptions",
    "generation_request",
]

#: Seeds are integers JSON carries exactly (receipts are canonical JSON, RFC 8785's range).
MAX_SEED = 2**53 - 1
_MAX_TEXT = 256 * 1024


class ChatMessage(BaseModel):
    """One chat message; ``name`` is accepted and not used."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=_MAX_TEXT)]
    name: str | None = None


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage``."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Generation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Annotated[str, Field(min_length=1, max_length=200)]
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED)] = None
    max_tokens: Annotated[int | None, Field(ge=1, le=2048)] = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: Annotated[int | None, Field(ge=1, le=1)] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: Annotated[float | None, Field(ge=0.0, le=0.0)] = None
    presence_penalty: Annotated[float | None, Field(ge=0.0, le=0.0)] = None

    def drawn_seed(self) -> int:
        """The request's seed, or a fresh random one (recorded in the receipt either way)."""
        return self.seed if self.seed is not None else secrets.randbelow(MAX_SEED + 1)

    def parameters(self, max_tokens: int | None, default_max_tokens: int) -> dict[str, Any]:
        """qward sampling parameters with OpenAI's meaning: temperature and top_p (defaults 1),
        and none of the engine's own top-k or min-p cuts, which OpenAI does not apply. Reals
        as exact ``float.hex()`` text; the receipt binds exactly these."""
        parameters: dict[str, Any] = {
            "temperature": (1.0 if self.temperature is None else self.temperature).hex(),
            "top_p": (1.0 if self.top_p is None else self.top_p).hex(),
            "top_k": 0,
            "min_p": (0.0).hex(),
            "max_tokens": max_tokens or default_max_tokens,
        }
        if self.stop is not None:
            parameters["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return parameters


class ChatCompletionRequest(_Generation):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[int | None, Field(ge=1, le=2048)] = None


class CompletionRequest(_Generation):
    """``POST /v1/completions``: one prompt string."""

    prompt: Annotated[str, Field(max_length=_MAX_TEXT)]

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("only one prompt string is supported")
        return value


def generation_request(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The canonical qward generation request (what is sealed and what the receipt names)."""
    if isinstance(body, ChatCompletionRequest):
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise InputError("give max_tokens or max_completion_tokens, not both")
        limit = body.max_completion_tokens or body.max_tokens
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        # OpenAI's chat has no default limit; the engine's default bounds it here.
        return {"mode": "chat", "messages": messages, "parameters": body.parameters(limit, 128)}
    # OpenAI's documented default for completions is 16 tokens.
    return {
        "mode": "completion",
        "prompt": body.prompt,
        "parameters": body.parameters(body.max_tokens, 16),
    }
