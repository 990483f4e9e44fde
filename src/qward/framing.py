"""Length-prefixed frames: the one wire format between qward's processes.

A frame is ``u32 header_len | u64 payload_len | header | payload`` (big-endian), where the header
is a canonical JSON object and the payload is opaque bytes. Both lengths are checked against
limits before anything is allocated, so a hostile peer cannot make the reader buffer unbounded data.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO, Protocol

from qward.encoding import canonical_json, parse_canonical_json
from qward.errors import FormatError

__all__ = [
    "MAX_HEADER_BYTES",
    "FrameTooLargeError",
    "encode_frame",
    "read_frame",
    "read_frame_async",
    "recv_frame",
    "send_frame",
    "write_frame",
]

MAX_HEADER_BYTES = 1024 * 1024
_PREFIX = struct.Struct(">IQ")


class FrameTooLargeError(FormatError):
    """A peer announced a frame over the agreed limit."""


class _Socket(Protocol):
    def sendall(self, data: bytes, /) -> None: ...
    def recv_into(self, buffer: memoryview, nbytes: int = ..., /) -> int: ...


class _AsyncReader(Protocol):
    async def readexactly(self, n: int, /) -> bytes: ...


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    head = canonical_json(header)
    return _PREFIX.pack(len(head), len(payload)) + head + payload


_encode = encode_frame


def _check_lengths(head_len: int, body_len: int, max_payload: int) -> None:
    if head_len > MAX_HEADER_BYTES:
        raise FrameTooLargeError(f"frame header of {head_len} bytes is over the limit")
    if body_len > max_payload:
        raise FrameTooLargeError(
            f"frame payload of {body_len} bytes is over the limit of {max_payload}"
        )


def write_frame(stream: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    """Write one frame to a binary stream and flush it."""
    stream.write(_encode(header, payload))
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the stream mid-frame" if buf else "peer closed the stream")
        buf += chunk
    return bytes(buf)


def read_frame(stream: BinaryIO, *, max_payload: int) -> tuple[dict[str, Any], bytes]:
    """Read one frame from a binary stream; ``EOFError`` if the peer has closed it."""
    head_len, body_len = _PREFIX.unpack(_read_exact(stream, _PREFIX.size))
    _check_lengths(head_len, body_len, max_payload)
    header = parse_canonical_json(_read_exact(stream, head_len), what="frame header")
    return header, _read_exact(stream, body_len)


def send_frame(sock: _Socket, header: dict[str, Any], payload: bytes = b"") -> None:
    """Send one frame over a connected socket."""
    sock.sendall(_encode(header, payload))


def _recv_exact(sock: _Socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the connection" if got == 0 else "peer closed mid-frame")
        got += k
    return bytes(buf)


def recv_frame(sock: _Socket, *, max_payload: int) -> tuple[dict[str, Any], bytes]:
    """Receive one frame from a connected socket."""
    head_len, body_len = _PREFIX.unpack(_recv_exact(sock, _PREFIX.size))
    _check_lengths(head_len, body_len, max_payload)
    header = parse_canonical_json(_recv_exact(sock, head_len), what="frame header")
    return header, _recv_exact(sock, body_len)


async def read_frame_async(
    reader: _AsyncReader, *, max_payload: int
) -> tuple[dict[str, Any], bytes]:
    """Read one frame from an asyncio stream; ``asyncio.IncompleteReadError`` if it closes."""
    head_len, body_len = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    _check_lengths(head_len, body_len, max_payload)
    header = parse_canonical_json(await reader.readexactly(head_len), what="frame header")
    return header, await reader.readexactly(body_len)
