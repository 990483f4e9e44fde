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
from qward.crypto.stream import (
    MAX_CHUNK_INDEX,
    MAX_RUN_PIECES,
    TAG_SIZE,
    StreamHeader,
    StreamSource,
    chunk_runs,
    nonce_packer,
    read_stream_header,
)
from qward.errors import DecryptionError, UnknownKeyError
from qward.protected.handles import HPKEPrivateKey, KeyHandle

__all__ = ["open_stream_to_file"]


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


class _ChunkOpener:
    """Opens runs of sealed chunks in order into one reused buffer, written once per run."""

    def __init__(self, head: StreamHeader, payload_key: bytes, dst: BinaryIO) -> None:
        self._decrypt = AESGCM(payload_key).decrypt_into
        self._nonce, self._aad = nonce_packer(head.nonce_prefix), head.aad
        self._size, self._write = head.chunk_size, dst.write
        self._out = memoryview(bytearray(head.chunk_size * MAX_RUN_PIECES))
        self.index, self.total = 0, 0

    def open(self, run: memoryview, *, final: bool) -> None:
        """Open ``run``: whole sealed chunks, and if ``final`` the chunk with the last flag.

        ``run`` holds at most ``MAX_RUN_PIECES`` sealed chunks, as ``chunk_runs`` yields them.
        """
        size, length = self._size, len(run)
        sealed = size + TAG_SIZE
        body = (length - 1) // sealed * sealed if final and length else length
        if self.index + body // sealed + final - 1 > MAX_CHUNK_INDEX:
            raise DecryptionError("sealed stream: more than 2**32 chunks")
        # Locals, not attributes, in the per-chunk loop: it runs 16,384 times per GiB.
        decrypt, pack, aad, out = self._decrypt, self._nonce, self._aad, self._out
        index, at = self.index, 0
        try:
            for offset in range(0, body, sealed):
                decrypt(pack(index, 0), run[offset : offset + sealed], aad, out[at : at + size])
                index, at = index + 1, at + size
            if final:
                if length - body < TAG_SIZE:
                    raise DecryptionError(f"sealed stream: truncated at chunk {index}")
                tail = length - body - TAG_SIZE
                decrypt(pack(index, 1), run[body:], aad, out[at : at + tail])
                index, at = index + 1, at + tail
        except InvalidTag:
            # decrypt_into has already written the forged chunk's plaintext: wipe it, write nothing.
            out[:] = bytes(len(out))
            raise DecryptionError(
                f"sealed stream: chunk {index} fails authentication "
                "(modified, reordered, truncated or wrong key)"
            ) from None
        # Only authenticated plaintext reaches dst, and only the caller's temporary file.
        self._write(out[:at])
        self.index, self.total = index, self.total + at


def _open_chunks(src: StreamSource, dst: BinaryIO, head: StreamHeader, payload_key: bytes) -> int:
    """Open every chunk of ``src``: a reader at the first chunk, or the whole stream in memory."""
    if isinstance(src, bytes | bytearray | memoryview):
        # The views are released even on failure, so a bytearray is resizable again afterwards.
        with memoryview(src) as whole, whole.cast("B") as flat, flat[head.front_length :] as body:
            return _open_runs(body, dst, head, payload_key)
    return _open_runs(src, dst, head, payload_key)


def _open_runs(src: StreamSource, dst: BinaryIO, head: StreamHeader, payload_key: bytes) -> int:
    opener = _ChunkOpener(head, payload_key, dst)
    with chunk_runs(src, head.chunk_size + TAG_SIZE) as runs:
        for run, final in runs:
            with run:
                opener.open(run, final=final)
    return opener.total


def open_stream_to_file(
    src: StreamSource,
    destination: Path,
    *,
    keys: dict[str, KeyHandle[HPKEPrivateKey]],
    expected_content_type: str,
) -> int:
    """Decrypt a sealed stream into ``destination``; returns the plaintext length.

    ``src`` is a reader or the sealed bytes in memory (opened from slices, without copying).
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
