"""The receipt body of a text generation (the core's side of ``qward.receipts.generation``)."""

from __future__ import annotations

from typing import Any

from qward import __version__
from qward.protected.models import ModelEntry
from qward.receipts.generation import (
    GENERATION_REQUEST_CONTENT_TYPE,
    generation_section,
    output_sha256,
)

__all__ = [
    "GENERATION_REQUEST_CONTENT_TYPE",
    "MAX_GENERATION_REQUEST_BYTES",
    "generation_receipt_body",
]

#: A prompt or a chat of up to this many bytes (the worker bounds it again).
MAX_GENERATION_REQUEST_BYTES = 1024 * 1024


def generation_receipt_body(
    entry: ModelEntry,
    info: dict[str, Any],
    record: dict[str, Any],
    *,
    request_sha256: str,
    base: dict[str, Any],
) -> dict[str, Any]:
    """``base`` (the members every receipt shares) plus what this generation binds: the model,
    the request's digest, the token ids and text, the sampling parameters, the seed and the
    engine profile (settings, build, versions, chat template digest)."""
    return {
        **base,
        "model": {
            "sha256": entry.model_sha256,
            "sealed_sha256": entry.sealed_sha256,
            "name": entry.name,
        },
        "input": {"sha256": request_sha256},
        "output": {"sha256": output_sha256(record["token_ids"], record["text"])},
        "parameters": record["parameters"],
        "seed": record["seed"],
        "runtime": {
            "engine": info.get("engine", "llama.cpp"),
            "session_options": info["session_options"],
            "libraries": info["libraries"],
            "platform_class": info["platform_class"],
            "qward": __version__,
            "generation": generation_section(record),
        },
        "isolation": info["isolation"],
    }
