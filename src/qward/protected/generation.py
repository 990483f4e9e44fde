"""The receipt body of a text generation (the core's side of ``qward.receipts.generation``)."""

from __future__ import annotations

from typing import Any

from qward import __version__
from qward.errors import InputError
from qward.protected.model_provenance import signature_member
from qward.protected.models import ModelEntry
from qward.receipts.generation import (
    GENERATION_REQUEST_CONTENT_TYPE,
    generation_section,
    output_sha256,
    token_ids_sha256,
)
from qward.receipts.replay_verdict import BITWISE, MISMATCH
from qward.runtime.llm_profile import first_divergence

__all__ = [
    "GENERATION_REQUEST_CONTENT_TYPE",
    "MAX_GENERATION_REQUEST_BYTES",
    "generation_receipt_body",
    "judge_generation",
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
        **signature_member(entry.signature),
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


def judge_generation(
    body: dict[str, Any], record: dict[str, Any], original_token_ids: object
) -> tuple[str, str]:
    """Token ids compare exactly, on any platform: bitwise-identical, or a mismatch that says
    where the replay diverged (from ``original_token_ids``, which must be the receipt's)."""
    if output_sha256(record["token_ids"], record["text"]) == body["output"]["sha256"]:
        return BITWISE, "the same token ids and text"
    generation = body["runtime"]["generation"]
    if original_token_ids is None:
        return MISMATCH, "the token ids differ (give the original ids to locate the divergence)"
    if not isinstance(original_token_ids, list) or not all(
        type(t) is int for t in original_token_ids
    ):
        raise InputError("original_token_ids must be a list of token ids")
    if token_ids_sha256(original_token_ids) != generation["token_ids_sha256"]:
        raise InputError("original_token_ids are not the ones the receipt binds")
    divergence = first_divergence(original_token_ids, list(record["token_ids"]))
    where = divergence.describe() if divergence else "the token ids agree but the text differs"
    return MISMATCH, f"replay diverged at {where}"
