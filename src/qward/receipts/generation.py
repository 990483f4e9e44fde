"""What a text-generation receipt binds, and how a client checks a completion against it.

The core seals nothing new for generation: the request (prompt or chat messages, and the sampling
parameters as ``float.hex()`` text) travels sealed like any input, and the receipt names it by the
SHA-256 of its canonical bytes. The output is the exact generated token ids and the text they
released, bound as ``output_sha256``; ``runtime.generation`` adds the prompt token ids' digest,
counts, the finish reason and the chat template's digest, so a replay can compare token by token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from qward.encoding import canonical_json
from qward.errors import FormatError, VerificationError

__all__ = [
    "GENERATION_REQUEST_CONTENT_TYPE",
    "check_completion",
    "generation_section",
    "output_sha256",
    "token_ids_sha256",
]

#: The content type a sealed generation request carries.
GENERATION_REQUEST_CONTENT_TYPE = "application/x-qward-generation-request"


def token_ids_sha256(token_ids: Sequence[int]) -> str:
    """SHA-256 of the canonical JSON list of ``token_ids``."""
    return hashlib.sha256(canonical_json(list(token_ids))).hexdigest()


def output_sha256(token_ids: Sequence[int], text: str) -> str:
    """What a generation receipt's ``output.sha256`` is: the token ids and the text together."""
    return hashlib.sha256(canonical_json({"text": text, "token_ids": list(token_ids)})).hexdigest()


def generation_section(record: dict[str, Any]) -> dict[str, Any]:
    """The receipt's ``runtime.generation`` member for a ``qward/generation/v1`` record."""
    prompt, tokens = record["prompt_token_ids"], record["token_ids"]
    return {
        "mode": record["mode"],
        "prompt_token_ids_sha256": token_ids_sha256(prompt),
        "prompt_tokens": len(prompt),
        "token_ids_sha256": token_ids_sha256(tokens),
        "completion_tokens": len(tokens),
        "finish_reason": record["finish_reason"],
        "matched_stop": record.get("matched_stop"),
        "chat_template_sha256": record.get("chat_template_sha256"),
    }


def check_completion(body: dict[str, Any], *, token_ids: Sequence[int], text: str) -> None:
    """Raise ``VerificationError`` unless ``token_ids`` and ``text`` are what ``body`` (a
    verified receipt body) says was generated."""
    generation = body.get("runtime", {}).get("generation")
    if not isinstance(generation, dict):
        raise FormatError("the receipt is not for a text generation")
    if token_ids_sha256(token_ids) != generation.get("token_ids_sha256"):
        raise VerificationError("the completion's token ids are not the ones the receipt binds")
    if output_sha256(token_ids, text) != body["output"]["sha256"]:
        raise VerificationError("the completion's text is not the one the receipt binds")
