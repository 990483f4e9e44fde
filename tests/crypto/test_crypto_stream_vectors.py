"""Sealed streams are byte-identical whatever the source and however it is read: pinned digests
from the code before the run-based rewrite, an independent reference encoder, and the edges of
the read-ahead runs (chunk index limit, released buffers)."""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from test_crypto_envelope import KEYS, PUBLIC

from qward.crypto.stream import (
    MAX_CHUNK_INDEX,
    MAX_RUN_PIECES,
    STREAM_MAGIC,
    _ChunkSealer,
    chunk_nonce,
    nonce_packer,
    read_stream_header,
    seal_stream,
)
from qward.errors import DecryptionError, InputError
from qward.protected.stream_opening import _ChunkOpener, open_stream_to_file

CT = "application/onnx"
SEED = b"qward-stream-kat"


def _random_bytes(seed: bytes) -> Callable[[int], bytes]:
    """Deterministic stand-in for os.urandom: SHA-256(seed || u32 counter), one digest a call."""
    counter = 0

    def take(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
            counter += 1
        return out[:n]

    return take


def _plaintext(size: int) -> bytes:
    # (i * 7 + 3) mod 256 for i in range(size): period 256, so a repeated block builds it fast.
    return (bytes((i * 7 + 3) % 256 for i in range(256)) * (size // 256 + 1))[:size]


def _without_wrap(blob: bytes) -> bytes:
    """The stream minus its key-wrap section, whose HPKE encapsulation is randomised inside."""
    (header_len,) = struct.unpack(">I", blob[8:12])
    end = 12 + header_len
    (wrap_len,) = struct.unpack(">I", blob[end : end + 4])
    return blob[:end] + blob[end + 4 + wrap_len :]


class _ChoppyReader(io.RawIOBase):
    """A reader that returns short reads of varying sizes, as pipes and sockets may."""

    def __init__(self, data: bytes, steps: tuple[int, ...] = (1, 7, 4096, 100_000, 333)) -> None:
        self._data, self._pos, self._steps, self._calls = data, 0, steps, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        step = self._steps[self._calls % len(self._steps)]
        self._calls += 1
        n = min(len(buffer), step, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class _ReadOnly:
    """A reader with read() alone (BinaryIO does not promise readinto), returning short reads."""

    def __init__(self, data: bytes) -> None:
        self._inner = _ChoppyReader(data, steps=(5, 70_000, 1))

    def read(self, n: int = -1) -> bytes:
        buffer = bytearray(n)
        return bytes(buffer[: self._inner.readinto(buffer)])


def _sources(data: bytes) -> list[Any]:
    return [
        data,
        bytearray(data),
        memoryview(data),
        io.BytesIO(data),
        _ChoppyReader(data),
        _ReadOnly(data),
    ]


def _seal(src: Any, chunk: int, seed: bytes = SEED) -> bytes:
    out = io.BytesIO()
    seal_stream(
        src,
        out,
        recipient=PUBLIC,
        content_type=CT,
        chunk_size=chunk,
        random_bytes=_random_bytes(seed),
    )
    return out.getvalue()


# Provenance: computed by sealing _plaintext(size) with random_bytes=_random_bytes(SEED) and
# content type "application/onnx", using qward at commit 4cdf925 (seal_stream reading one chunk at
# a time through _fill, before runs and bytes sources existed), then hashing _without_wrap(blob).
# Nothing hashed depends on the recipient: the header and chunks come from random_bytes alone.
PINNED = {
    (16384, 0): "d5405a3e51968ee9249c04fe7278838c48b78e8dd47d9afb0296961c254a6df2",
    (16384, 1): "84bb1fd94103e22120f9b260a15fd47baad6533f4bf017e54bf4e13e5c237413",
    (16384, 16383): "cc2d753c87734c1f298d786ddccd937ebff4af7e227f51b620d84e4bb3b352b0",
    (16384, 16384): "b29054af857b1ee0a62f7b57a9befa3a86a548546e553be489bcd33f8de61412",
    (16384, 16385): "ecb20e58a11e6da9b7715dc52e987b5052a150a13b40e611d6114ba1eb769ea6",
    (16384, 49159): "885f9fae38ba2ff942690b4102cbd1ea7837ce93ebefa8a2f4a20ada6c285f84",
    (65536, 0): "dc1bf05b1c0cf89ebc2dbbe22c7e88c1c2406bb5cd25bf9e8d93583282487c84",
    (65536, 1): "9044b0cc6797ce51ceb4cdefe57a690e458453c0ccf9a2b57bbad41a94149c14",
    (65536, 65535): "7005c59d0e0ede90cbe3e83c08d87bb7bcc8589bee9f3634ed712c30a4b90412",
    (65536, 65536): "7d657bbf88077002d673299b066e0e6fe7e6867a30b3af2107606572fc4d0cc7",
    (65536, 65537): "cf3fae6b29aaf95d2cd961cb09fa2cf9d3257793ccf90ff110b3cdfa15e21d9b",
    (65536, 196615): "2ccf044d77da100234a32ebc8d479e59e1b1d8ffae031bd6532b7b777ce6e320",
}


@pytest.mark.parametrize(("chunk", "size"), sorted(PINNED))
def test_sealed_bytes_match_the_pinned_digests(chunk: int, size: int) -> None:
    data = _plaintext(size)
    for src in _sources(data):
        digest = hashlib.sha256(_without_wrap(_seal(src, chunk))).hexdigest()
        assert digest == PINNED[chunk, size], type(src).__name__


def _reference_body(data: bytes, chunk: int, header: bytes, seed: bytes) -> bytes:
    """The chunks as the module docstring specifies them, built from pyca primitives alone."""
    take = _random_bytes(seed)
    dek, prefix = take(32), take(7)
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"qward/sealed/v1/payload-key"
    )
    aead, aad = AESGCM(hkdf.derive(dek)), hashlib.sha256(STREAM_MAGIC + header).digest()
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    return b"".join(
        aead.encrypt(prefix + i.to_bytes(4, "big") + bytes([i == len(pieces) - 1]), piece, aad)
        for i, piece in enumerate(pieces)
    )


RUN = MAX_RUN_PIECES * 16384
EDGE_SIZES = [0, 1, 16384, RUN - 1, RUN, RUN + 1, RUN + 16384, 2 * RUN, 2 * RUN + 5]


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_chunks_match_an_independent_reference_at_run_edges(size: int) -> None:
    data = _plaintext(size)
    blob = _seal(data, 16384)
    head = read_stream_header(blob)
    assert blob[head.front_length :] == _reference_body(data, 16384, head.header, SEED)
    (wrap_len,) = struct.unpack(">I", blob[12 + len(head.header) : 16 + len(head.header)])
    assert head.front_length == 16 + len(head.header) + wrap_len
    assert read_stream_header(io.BytesIO(blob)).front_length == head.front_length


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 3 * RUN + 3), kind=st.integers(0, 5))
def test_every_source_seals_alike_and_opens_from_memory_and_readers(
    size: int, kind: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = _plaintext(size)
    blob = _seal(_sources(data)[kind], 16384)
    assert _without_wrap(blob) == _without_wrap(_seal(data, 16384))
    where = tmp_path_factory.mktemp("open")
    for src in (blob, bytearray(blob), io.BytesIO(blob), _ChoppyReader(blob), _ReadOnly(blob)):
        target = where / "model.onnx"
        assert open_stream_to_file(src, target, keys=KEYS, expected_content_type=CT) == size
        assert target.read_bytes() == data
        target.unlink()


def test_progress_reports_every_chunk() -> None:
    seen: list[int] = []
    seal_stream(
        _plaintext(RUN + 5), io.BytesIO(), recipient=PUBLIC, content_type=CT,
        chunk_size=16384, progress=seen.append,
    )  # fmt: skip
    assert seen == [16384 * i for i in range(1, MAX_RUN_PIECES + 1)] + [RUN + 5]


def test_chunk_nonce_layout_and_checks() -> None:
    prefix = bytes(range(1, 8))
    assert chunk_nonce(prefix, 0x01020304, last=True) == prefix + b"\x01\x02\x03\x04\x01"
    assert chunk_nonce(prefix, 5, last=False) == prefix + b"\x00\x00\x00\x05\x00"
    assert nonce_packer(prefix)(0x01020304, 1) == chunk_nonce(prefix, 0x01020304, last=True)
    for bad in (prefix[:6], prefix + b"\x00"):
        with pytest.raises(InputError):
            chunk_nonce(bad, 0, last=False)
        with pytest.raises(InputError):
            nonce_packer(bad)
    with pytest.raises(InputError):
        chunk_nonce(prefix, MAX_CHUNK_INDEX + 1, last=False)


def test_random_bytes_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(InputError, match="random_bytes"):
        seal_stream(
            b"x",
            io.BytesIO(),
            recipient=PUBLIC,
            content_type=CT,
            random_bytes=lambda n: b"\x00" * 8,
        )


def test_chunk_index_cannot_pass_two_to_the_32() -> None:
    # Reaching 2**32 chunks takes 64 TiB, so the counters are started near the end instead.
    sealer = _ChunkSealer(AESGCM(bytes(32)), bytes(7), b"", 16384, io.BytesIO(), None)
    sealer.index = MAX_CHUNK_INDEX
    sealer.seal(memoryview(b"last"), final=True)  # index 2**32 - 1 is the last one allowed
    sealer.index = MAX_CHUNK_INDEX
    with pytest.raises(InputError, match="too large"):
        sealer.seal(memoryview(bytes(16385)), final=True)  # two chunks: 2**32 - 1 and 2**32
    head = read_stream_header(_seal(b"", 16384))
    opener = _ChunkOpener(head, bytes(32), io.BytesIO())
    opener.index = MAX_CHUNK_INDEX
    with pytest.raises(DecryptionError, match="2\\*\\*32"):
        opener.open(memoryview(bytes(2 * (16384 + 16))), final=True)


def test_bytearray_sources_are_released_even_after_failures(tmp_path: Path) -> None:
    data = bytearray(_plaintext(RUN + 3))
    seal_stream(data, io.BytesIO(), recipient=PUBLIC, content_type=CT, chunk_size=16384)
    data.extend(b"resizable")

    class _Broken(io.BytesIO):
        def write(self, chunk: Any) -> int:
            if self.tell() > 20_000:
                raise OSError("disk full")
            return super().write(chunk)

    with pytest.raises(OSError, match="disk full") as failed:
        seal_stream(data, _Broken(), recipient=PUBLIC, content_type=CT, chunk_size=16384)
    data.extend(b"still resizable while the traceback lives")
    assert failed.value is not None

    blob = bytearray(_seal(bytes(data), 16384))
    blob[-1] ^= 1
    with pytest.raises(DecryptionError) as refused:
        open_stream_to_file(blob, tmp_path / "m", keys=KEYS, expected_content_type=CT)
    blob.extend(b"resizable")
    assert refused.value is not None and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra", [0, 5, 16, 16384 + 16 + 3])
def test_cuts_at_run_edges_are_refused_with_the_chunk_named(extra: int, tmp_path: Path) -> None:
    blob = _seal(_plaintext(2 * RUN + 100), 16384)
    front = read_stream_header(blob).front_length
    cut = blob[: front + MAX_RUN_PIECES * (16384 + 16) + extra]
    # Exactly a run of whole chunks and none flagged last, or a stub too short for a tag, or a
    # whole chunk and a stub: each is named by the chunk where the stream stops making sense.
    expected = {
        0: f"chunk {MAX_RUN_PIECES - 1} fails",
        5: f"truncated at chunk {MAX_RUN_PIECES}",
        16: f"chunk {MAX_RUN_PIECES} fails",
        16384 + 16 + 3: f"truncated at chunk {MAX_RUN_PIECES + 1}",
    }[extra]
    for src in (cut, io.BytesIO(cut), _ChoppyReader(cut)):
        with pytest.raises(DecryptionError, match=expected):
            open_stream_to_file(src, tmp_path / "m", keys=KEYS, expected_content_type=CT)
        assert list(tmp_path.iterdir()) == []
