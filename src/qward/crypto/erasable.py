"""Erasable log fields: a personal value sealed under its data subject's key (crypto-shredding).

A field that holds personal data is written into a log entry as a small versioned object::

    {"qward_erasable": {"v": 1, "suite": "AES_256_GCM", "key_id": "<subject key id>",
                        "nonce": "<base64>", "ciphertext": "<base64>"}}

The leaf hash covers these bytes, never the plaintext, so deleting the subject's key makes the
value unreadable while every inclusion and consistency proof stays valid. The AAD binds the
subject key id and the field's place (entry type and member), so a sealed value cannot be moved to
another field or another subject and still open.
"""

from __future__ import annotations

import secrets
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, VerificationError

__all__ = [
    "ACCESS_CONTEXT",
    "ERASABLE_MEMBER",
    "ERASABLE_SUITE",
    "ERASED",
    "is_sealed_field",
    "open_field",
    "parameter_context",
    "seal_field",
    "sealed_key_id",
]

ERASABLE_MEMBER = "qward_erasable"
ERASABLE_SUITE = "AES_256_GCM"
#: What a reader shows for a value whose subject key has been deleted.
ERASED = "[erased]"
#: Where a sealed caller token id sits in an access entry.
ACCESS_CONTEXT = "qward/access/v1:token_id"
_MEMBERS = {"v", "suite", "key_id", "nonce", "ciphertext"}
_MAX_CIPHERTEXT = 64 * 1024


def parameter_context(name: str) -> str:
    """Where a sealed receipt parameter sits (bound into its ciphertext)."""
    return f"qward/receipt:parameters.{name}"


def _aad(key_id: str, context: str) -> bytes:
    return canonical_json({"key_id": key_id, "context": context, "v": 1})


def seal_field(value: Any, *, key: bytes, key_id: str, context: str) -> dict[str, Any]:
    """``value`` (any canonical-JSON value) sealed under the subject ``key``."""
    if len(key) != 32:
        raise ValueError("a subject key is 32 bytes")
    nonce = secrets.token_bytes(12)
    plaintext = canonical_json({"value": value})
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _aad(key_id, context))
    return {
        ERASABLE_MEMBER: {
            "v": 1,
            "suite": ERASABLE_SUITE,
            "key_id": key_id,
            "nonce": b64encode(nonce),
            "ciphertext": b64encode(ciphertext),
        }
    }


def is_sealed_field(value: object) -> bool:
    """Whether ``value`` is a sealed field (by shape; ``open_field`` checks the rest)."""
    return isinstance(value, dict) and set(value) == {ERASABLE_MEMBER}


def _inner(value: object) -> dict[str, Any]:
    if not is_sealed_field(value):
        raise FormatError("not a sealed field")
    inner = value[ERASABLE_MEMBER]  # type: ignore[index]
    if not isinstance(inner, dict) or set(inner) != _MEMBERS:
        raise FormatError(f"sealed field: expected exactly {', '.join(sorted(_MEMBERS))}")
    if inner["v"] != 1 or inner["suite"] != ERASABLE_SUITE:
        raise FormatError(f"sealed field: unsupported version or suite {inner['suite']!r}")
    if not isinstance(inner["key_id"], str) or not inner["key_id"]:
        raise FormatError("sealed field: key_id must be a non-empty string")
    return inner


def sealed_key_id(value: object) -> str:
    """The subject key id a sealed field names."""
    return str(_inner(value)["key_id"])


def open_field(value: object, *, key: bytes, context: str) -> Any:
    """The plaintext of a sealed field; ``VerificationError`` if it was altered or moved."""
    inner = _inner(value)
    nonce = b64decode(inner["nonce"], what="sealed field nonce")
    ciphertext = b64decode(inner["ciphertext"], what="sealed field ciphertext")
    if len(nonce) != 12 or not 16 <= len(ciphertext) <= _MAX_CIPHERTEXT:
        raise FormatError("sealed field: nonce or ciphertext has the wrong size")
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, _aad(inner["key_id"], context))
    except InvalidTag:
        raise VerificationError(
            f"sealed field ({context}) does not authenticate under its subject key"
        ) from None
    return parse_canonical_json(plaintext, what="sealed field value").get("value")
