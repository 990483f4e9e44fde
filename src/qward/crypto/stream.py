"""Streaming sealed format for large models: chunked AES-256-GCM (STREAM) in constant memory.

Layout (lengths big-endian)::

    b"QWSTRM\\x00\\x01" | u32 len | header | u32 len | wrap | chunk_0 | chunk_1 | ... | chunk_last

Every chunk is ``chunk_size`` plaintext bytes (the last one 0 to ``chunk_size``) sealed with
AES-256-GCM. Following the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015), chunk
``i``'s nonce is ``prefix(7) || i (u32) || last flag (1)``, so reordering, dropping, duplicating
or truncating chunks fails authentication, and a stream cut exactly at a chunk boundary fails
because no chunk carried the last flag. Each chunk's associated data is the SHA-256 of the magic
and header, which binds the header (chunk size, content type, commitment) to every chunk. As in
``envelope``, the data key is HPKE-wrapped outside the header (so re-wrapping never touches the
payload) and a key commitment is checked before any chunk is opened.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qward.crypto.envelope import derive_payload_keys, parse_key_wrap, wrap_data_key
from qward.crypto.keys import HPKERecipientKey
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, InputError
from qward.suites import SuitePolicy

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "STREAM_FORMAT",
    "STREAM_MAGIC",
    "StreamHeader",
    "chunk_nonce",
    "read_stream_header",
    "seal_stream",
]

STREAM_MAGIC = b"QWSTRM\x00\x01"
STREAM_FORMAT = "qward/sealed-stream/v1"
DEFAULT_CHUNK_SIZE = 64 * 1024
_MIN_CHUNK, _MAX_CHUNK = 16 * 1024, 64 * 1024
_PREFIX_LEN = 7
_MAX_CHUNKS = 2**32 - 1
_MAX_SECTION = 64 * 1024
_U32 = struct.Struct(">I")


def chunk_nonce(prefix: bytes, index: int, *, last: bool) -> bytes:
    """STREAM nonce for chunk ``index``."""
    return prefix + _U32.pack(index) + (b"\x01" if last else b"\x00")


@dataclass(frozen=True, kw_only=True)
class StreamHeader:
    """The parsed, not yet opened, front of a sealed stream."""

    header: bytes
    content_type: str
    chunk_size: int
    nonce_prefix: bytes
    commitment: bytes
    suite: str
    key_id: str
    encapsulated_key: bytes

    @property
    def aad(self) -> bytes:
        """Associated data of every chunk."""
        return hashlib.sha256(STREAM_MAGIC + self.header).digest()


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if data is None or len(data) != n:
        raise FormatError(f"sealed stream: truncated in the {what}")
    return data


def _section(src: BinaryIO, what: str) -> bytes:
    (length,) = _U32.unpack(_read_exact(src, 4, what))
    if length > _MAX_SECTION:
        raise FormatError(f"sealed stream: {what} length {length} is invalid")
    return _read_exact(src, length, what)


def read_stream_header(src: BinaryIO) -> StreamHeader:
    """Read and check the magic, header and key wrap; leaves ``src`` at the first chunk."""
    if src.read(len(STREAM_MAGIC)) != STREAM_MAGIC:
        raise FormatError("not a qward sealed stream (bad magic or unsupported version)")
    header = _section(src, "header")
    head = parse_canonical_json(header, what="sealed stream header")
    wrap = parse_key_wrap(_section(src, "key wrap"), what="sealed stream")
    if head.get("format") != STREAM_FORMAT:
        raise FormatError(f"sealed stream: unsupported format {head.get('format')!r}")
    chunk_size, content_type = head.get("chunk_size"), head.get("content_type")
    if not isinstance(chunk_size, int) or not _MIN_CHUNK <= chunk_size <= _MAX_CHUNK:
        raise FormatError(f"sealed stream: chunk size {chunk_size!r} is not 16 to 64 KiB")
    if not isinstance(content_type, str):
        raise FormatError("sealed stream: content_type must be a string")
    prefix = b64decode(head.get("nonce_prefix"), what="sealed stream nonce prefix")
    commitment = b64decode(head.get("commitment"), what="sealed stream commitment")
    if len(prefix) != _PREFIX_LEN or len(commitment) != 32:
        raise FormatError("sealed stream: nonce prefix or commitment has the wrong length")
    return StreamHeader(
        header=header,
        content_type=content_type,
        chunk_size=chunk_size,
        nonce_prefix=prefix,
        commitment=commitment,
        suite=wrap.suite,
        key_id=wrap.key_id,
        encapsulated_key=wrap.encapsulated_key,
    )


def seal_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    recipient: HPKERecipientKey,
    content_type: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    random_bytes: Callable[[int], bytes] = os.urandom,
    progress: Callable[[int], None] | None = None,
    policy: SuitePolicy | None = None,
) -> int:
    """Seal everything read from ``src`` into ``dst``; returns the plaintext length.

    Memory use is one chunk, whatever the size of ``src``. With a ``policy``, a recipient under a
    suite the policy does not accept is refused before anything is written.
    """
    if not _MIN_CHUNK <= chunk_size <= _MAX_CHUNK:
        raise InputError("chunk size must be 16 to 64 KiB")
    dek, prefix = random_bytes(32), random_bytes(_PREFIX_LEN)
    payload_key, commitment = derive_payload_keys(dek)
    header = canonical_json(
        {
            "format": STREAM_FORMAT,
            "content_type": content_type,
            "chunk_size": chunk_size,
            "nonce_prefix": b64encode(prefix),
            "commitment": b64encode(commitment),
        }
    )
    wrap = wrap_data_key(dek, recipient=recipient, header=header, policy=policy)
    dst.write(STREAM_MAGIC + _U32.pack(len(header)) + header + _U32.pack(len(wrap)) + wrap)
    aead, aad = AESGCM(payload_key), hashlib.sha256(STREAM_MAGIC + header).digest()
    # Two input buffers (current and read-ahead) and one output buffer, reused for every chunk.
    views = [memoryview(bytearray(chunk_size)), memoryview(bytearray(chunk_size))]
    out = memoryview(bytearray(chunk_size + 16))
    total, index = 0, 0
    pending = _fill(src, views[0])
    while True:
        # Read one chunk ahead: the current chunk is last exactly when the next read is empty.
        current, ahead = views[index % 2], views[(index + 1) % 2]
        following = _fill(src, ahead)
        last = following == 0
        nonce = chunk_nonce(prefix, index, last=last)
        written = aead.encrypt_into(nonce, current[:pending], aad, out[: pending + 16])
        dst.write(out[:written])
        total += pending
        if progress is not None:
            progress(total)
        if last:
            return total
        index += 1
        if index > _MAX_CHUNKS:
            raise InputError("input is too large for one sealed stream")
        pending = following


def _fill(src: BinaryIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got
