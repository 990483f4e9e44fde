"""Verify the answers of qward's OpenAI-compatible API offline, with the pinned trust bundle.

Works on plain JSON and on the ``openai`` package's objects (``.model_dump()``; it keeps the
unknown ``qward`` member). A completion verifies only if its receipt does (signature, log proof,
witness quorum, attestation) and binds exactly the returned token ids, text, seed and model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qward.errors import FormatError, VerificationError
from qward.receipts.generation import check_completion
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import VerifiedReceipt
from qward.sdk.client import verify

__all__ = ["verify_chat_completion", "verify_completion", "verify_streamed"]


def verify_chat_completion(response: Mapping[str, Any], *, trust: TrustBundle) -> VerifiedReceipt:
    """Verify a ``chat.completion`` answer: its receipt and the message it carries."""
    text = _choice(response).get("message", {}).get("content")
    return _verify(response, response.get("qward"), text, trust)


def verify_completion(response: Mapping[str, Any], *, trust: TrustBundle) -> VerifiedReceipt:
    """Verify a ``text_completion`` answer: its receipt and the text it carries."""
    return _verify(response, response.get("qward"), _choice(response).get("text"), trust)


def verify_streamed(
    text: str, final_chunk: Mapping[str, Any], *, trust: TrustBundle
) -> VerifiedReceipt:
    """Verify a streamed answer: the concatenated chunk texts against the last chunk's receipt."""
    return _verify(final_chunk, final_chunk.get("qward"), text, trust)


def _choice(response: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = response.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise FormatError("the answer must have exactly one choice")
    choice: Mapping[str, Any] = choices[0]
    return choice


def _verify(
    response: Mapping[str, Any], qward: object, text: object, trust: TrustBundle
) -> VerifiedReceipt:
    if not isinstance(qward, dict) or not isinstance(qward.get("receipt"), str):
        raise FormatError("the answer carries no qward receipt")
    if not isinstance(text, str) or not isinstance(qward.get("token_ids"), list):
        raise FormatError("the answer carries no text or no token ids")
    verified = verify(qward["receipt"].encode("utf-8"), trust=trust)
    body = verified.body
    check_completion(body, token_ids=qward["token_ids"], text=text)
    if body["seed"] != qward.get("seed"):
        raise VerificationError("the receipt records another seed than the answer states")
    if body["model"]["name"] != response.get("model"):
        raise VerificationError("the receipt names another model than the answer")
    return verified
