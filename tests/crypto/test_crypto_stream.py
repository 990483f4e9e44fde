"""Streaming sealed format: round trips at every boundary, and every kind of damage is refused
without leaving any plaintext behind."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_crypto_envelope import KEYS, OTHER_KEYS, PUBLIC

from qward.crypto.stream import read_stream_header, seal_stream
from qward.errors import DecryptionError, FormatError, InputError, UnknownKeyError
from qward.protected.stream_opening import open_stream_to_file

CT = "application/onnx"
CHUNK = 16 * 1024


def _seal(data: bytes, chunk: int = CHUNK) -> bytes:
    out = io.BytesIO()
    assert seal_stream(
        io.BytesIO(data), out, recipient=PUBLIC, content_type=CT, chunk_size=chunk
    ) == len(data)
    return out.getvalue()


def _open(blob: bytes, path: Path, keys: dict = KEYS, *, in_memory: bool = False) -> bytes:  # type: ignore[type-arg]
    """Open from a reader, or (``in_memory``) from the bytes themselves, sliced without copies."""
    target = path / "model.onnx"
    src = blob if in_memory else io.BytesIO(blob)
    open_stream_to_file(src, target, keys=keys, expected_content_type=CT)
    return target.read_bytes()


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_round_trip_at_chunk_boundaries(size: int, in_memory: bool, tmp_path: Path) -> None:
    data = bytes(i % 251 for i in range(size))
    blob = _seal(data)
    assert _open(blob, tmp_path, in_memory=in_memory) == data
    assert read_stream_header(io.BytesIO(blob)).chunk_size == CHUNK


SAMPLE = bytes(range(256)) * 200  # 51,200 bytes: three full chunks and a short one
BLOB = _seal(SAMPLE)
HEADER_END = len(BLOB) - (len(SAMPLE) + 4 * 16)


def _refused(blob: bytes, path: Path) -> None:
    for in_memory in (False, True):
        with pytest.raises((FormatError, DecryptionError, UnknownKeyError)):
            _open(blob, path, in_memory=in_memory)
        assert list(path.iterdir()) == [], "plaintext was left behind"


@settings(max_examples=150, deadline=None)
@given(position=st.integers(0, len(BLOB) - 1), flip=st.integers(1, 255))
def test_any_flipped_byte_is_refused(
    position: int, flip: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    damaged = bytearray(BLOB)
    damaged[position] ^= flip
    _refused(bytes(damaged), tmp_path_factory.mktemp("flip"))


@pytest.mark.parametrize("cut", [1, 16, CHUNK + 16, 2 * (CHUNK + 16), 3 * (CHUNK + 16)])
def test_truncation_is_refused(cut: int, tmp_path: Path) -> None:
    _refused(BLOB[: HEADER_END + cut], tmp_path)


def test_reordered_chunks_are_refused(tmp_path: Path) -> None:
    body = BLOB[HEADER_END:]
    size = CHUNK + 16
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    _refused(BLOB[:HEADER_END] + chunks[1] + chunks[0] + b"".join(chunks[2:]), tmp_path)


def test_duplicated_chunk_and_trailing_data_are_refused(tmp_path: Path) -> None:
    body = BLOB[HEADER_END:]
    size = CHUNK + 16
    _refused(BLOB[:HEADER_END] + body[:size] + body, tmp_path)
    _refused(BLOB + b"\x00" * 17, tmp_path)


def test_wrong_key_and_wrong_content_type(tmp_path: Path) -> None:
    with pytest.raises(UnknownKeyError):
        _open(BLOB, tmp_path, OTHER_KEYS)
    with pytest.raises(DecryptionError, match="expected"):
        open_stream_to_file(
            io.BytesIO(BLOB), tmp_path / "x", keys=KEYS, expected_content_type="text/plain"
        )
    assert list(tmp_path.iterdir()) == []


def test_chunk_size_limits() -> None:
    with pytest.raises(InputError):
        _seal(b"x", chunk=1024)
