"""The front of a sealed artifact or stream, and rewriting its key wrap without the payload.

Both sealed formats begin ``magic | u32 len | header | u32 len | wrap`` and continue with payload
bytes that depend only on the data key and the header. The wrap is outside every MAC (it is bound
to the header through the HPKE ``info`` instead), so a new wrap of the same data key for another
recipient can replace it while every payload byte stays as it was.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from qward.crypto.envelope import MAGIC, KeyWrap, parse_key_wrap
from qward.crypto.stream import STREAM_MAGIC
from qward.encoding import b64decode, parse_canonical_json
from qward.errors import FormatError

__all__ = ["ArtifactFront", "parse_front", "read_front", "rewrap_file"]

_U32 = struct.Struct(">I")
_MAX_SECTION = 64 * 1024
_KINDS = {MAGIC: "sealed", STREAM_MAGIC: "stream"}


@dataclass(frozen=True, kw_only=True)
class ArtifactFront:
    """Magic, header and key wrap of a sealed artifact (``kind`` "sealed") or stream."""

    kind: str
    magic: bytes
    header: bytes
    wrap_bytes: bytes
    wrap: KeyWrap
    commitment: bytes

    @property
    def size(self) -> int:
        """Length of the front in bytes: where the payload starts."""
        return len(self.magic) + 8 + len(self.header) + len(self.wrap_bytes)

    def to_bytes(self) -> bytes:
        """The front's bytes."""
        return self.with_wrap(self.wrap_bytes)

    def with_wrap(self, wrap: bytes) -> bytes:
        """The front's bytes with ``wrap`` in place of the current key wrap."""
        if len(wrap) > _MAX_SECTION:
            raise FormatError("key wrap is over the section size limit")
        return b"".join(
            [self.magic, _U32.pack(len(self.header)), self.header, _U32.pack(len(wrap)), wrap]
        )


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if data is None or len(data) != n:
        raise FormatError(f"sealed artifact: truncated in the {what}")
    return data


def _section(src: BinaryIO, what: str) -> bytes:
    (length,) = _U32.unpack(_read_exact(src, 4, what))
    if length > _MAX_SECTION:
        raise FormatError(f"sealed artifact: {what} length {length} is invalid")
    return _read_exact(src, length, what)


def read_front(src: BinaryIO) -> ArtifactFront:
    """Read the front of either sealed format from ``src``, leaving it at the payload."""
    magic = _read_exact(src, len(MAGIC), "magic")
    kind = _KINDS.get(magic)
    if kind is None:
        raise FormatError("not a qward sealed artifact or stream (bad magic)")
    header = _section(src, "header")
    wrap_bytes = _section(src, "key wrap")
    head = parse_canonical_json(header, what=f"{kind} header")
    commitment = b64decode(head.get("commitment"), what=f"{kind} commitment")
    if len(commitment) != 32:
        raise FormatError(f"{kind}: commitment has the wrong length")
    return ArtifactFront(
        kind=kind,
        magic=magic,
        header=header,
        wrap_bytes=wrap_bytes,
        wrap=parse_key_wrap(wrap_bytes, what=f"{kind} artifact"),
        commitment=commitment,
    )


def parse_front(data: bytes) -> ArtifactFront:
    """Parse a front given as bytes; trailing bytes after it are refused."""
    src = io.BytesIO(data)
    front = read_front(src)
    if src.read(1):
        raise FormatError("artifact front: unexpected bytes after the key wrap")
    return front


def rewrap_file(path: Path, front: ArtifactFront, new_front: bytes) -> None:
    """Replace ``path``'s front with ``new_front``, copying the payload byte for byte.

    The new file is written beside the old one and renamed over it only once complete and
    synced, so a crash leaves either the old artifact or the new one, never a mixture.
    """
    parsed = parse_front(new_front)
    if parsed.header != front.header or parsed.magic != front.magic:
        raise FormatError(f"{path}: the new front changes the header, not only the key wrap")
    partial = path.with_name(f".{path.name}.{os.getpid()}.rewrap")
    try:
        with open(path, "rb") as src, open(partial, "xb") as dst:
            if _read_exact(src, front.size, "front") != front.to_bytes():
                raise FormatError(f"{path} changed while it was being rewrapped")
            dst.write(new_front)
            while chunk := src.read(1024 * 1024):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(partial, os.stat(path).st_mode & 0o777)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
