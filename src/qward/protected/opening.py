"""Opening sealed artifacts with the core's HPKE private key."""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qward.crypto.envelope import (
    SealedArtifact,
    derive_payload_keys,
    hpke_info,
    hpke_suite,
    parse_sealed,
)
from qward.errors import DecryptionError, UnknownKeyError
from qward.protected.handles import HPKEPrivateKey, KeyHandle

__all__ = ["open_sealed"]


def open_sealed(
    blob: bytes,
    *,
    keys: dict[str, KeyHandle[HPKEPrivateKey]],
    limit: int,
    expected_content_type: str,
    parsed: SealedArtifact | None = None,
) -> bytes:
    """Authenticate and decrypt ``blob``; any failure raises without returning plaintext.

    1. Parse the framing (``FormatError`` on anything malformed or over ``limit``), unless the
       caller already parsed exactly this ``blob`` (``parsed``).
    2. Look up the private key by the artifact's key id.
    3. HPKE-open the data key with the header digest as ``info``.
    4. Check the key commitment in constant time, then AES-256-GCM-open the payload.
    """
    artifact = parsed if parsed is not None else parse_sealed(blob, limit=limit)
    if artifact.content_type != expected_content_type:
        raise DecryptionError(
            f"sealed artifact holds {artifact.content_type!r}, expected {expected_content_type!r}"
        )
    handle = keys.get(artifact.key_id)
    if handle is None:
        raise UnknownKeyError(
            f"sealed artifact is for key {artifact.key_id}, which this core lacks"
        )
    try:
        dek = hpke_suite(artifact.suite).decrypt(
            artifact.encapsulated_key, handle.unsafe_key(), info=hpke_info(artifact.header)
        )
    except (InvalidTag, ValueError):
        raise DecryptionError(
            "sealed artifact: the data key does not open (wrong key or modified)"
        ) from None
    payload_key, commitment = derive_payload_keys(dek)
    if not hmac.compare_digest(commitment, artifact.commitment):
        raise DecryptionError("sealed artifact: key commitment does not match")
    try:
        return AESGCM(payload_key).decrypt(artifact.nonce, artifact.ciphertext, artifact.aad)
    except InvalidTag:
        raise DecryptionError("sealed artifact: payload authentication failed") from None
