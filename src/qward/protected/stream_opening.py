"""Opening sealed streams with the core's HPKE key, in constant memory, releasing no plaintext
from a stream that does not authenticate to its end."""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qward.crypto.envelope import derive_payload_keys, hpke_info, hpke_suite
from qward.crypto.stream import StreamHeader, chunk_nonce, read_stream_header
from qward.errors import DecryptionError, UnknownKeyError
from qward.protected.handles import HPKEPrivateKey, KeyHandle

__all__ = ["open_stream_to_file"]

_TAG = 16


def _payload_key(head: StreamHeader, keys: dict[str, KeyHandle[HPKEPrivateKey]]) -> bytes:
    handle = keys.get(head.key_id)
    if handle is None:
        raise UnknownKeyError(f"sealed stream is for key {head.key_id}, which this core lacks")
    try:
        dek = hpke_suite(head.suite).decrypt(
            head.encapsulated_key, handle.unsafe_key(), info=hpke_info(head.header)
        )
    except (InvalidTag, ValueError):
        raise DecryptionError("sealed stream: the data key does not open") from None
    payload_key, commitment = derive_payload_keys(dek)
    if not hmac.compare_digest(commitment, head.commitment):
        raise DecryptionError("sealed stream: key commitment does not match")
    return payload_key


def _open_chunks(src: BinaryIO, dst: BinaryIO, head: StreamHeader, payload_key: bytes) -> int:
    aead, aad = AESGCM(payload_key), head.aad
    sealed_size = head.chunk_size + _TAG
    current = src.read(sealed_size)
    index, total = 0, 0
    while True:
        if len(current) < _TAG:
            raise DecryptionError(f"sealed stream: truncated at chunk {index}")
        following = src.read(sealed_size)
        last = not following
        if not last and len(current) != sealed_size:
            raise DecryptionError(f"sealed stream: chunk {index} is short but not the last")
        try:
            plain = aead.decrypt(chunk_nonce(head.nonce_prefix, index, last=last), current, aad)
        except InvalidTag:
            raise DecryptionError(
                f"sealed stream: chunk {index} fails authentication "
                "(modified, reordered, truncated or wrong key)"
            ) from None
        dst.write(plain)
        total += len(plain)
        if last:
            return total
        current, index = following, index + 1


def open_stream_to_file(
    src: BinaryIO,
    destination: Path,
    *,
    keys: dict[str, KeyHandle[HPKEPrivateKey]],
    expected_content_type: str,
) -> int:
    """Decrypt a sealed stream into ``destination``; returns the plaintext length.

    Plaintext is written to a private temporary file beside ``destination`` and renamed into place
    only after the final chunk authenticates; on any failure the temporary file is removed, so a
    damaged stream never leaves partial plaintext behind.
    """
    head = read_stream_header(src)
    if head.content_type != expected_content_type:
        raise DecryptionError(
            f"sealed stream holds {head.content_type!r}, expected {expected_content_type!r}"
        )
    payload_key = _payload_key(head, keys)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as dst:
            total = _open_chunks(src, dst, head, payload_key)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, destination)
        return total
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
