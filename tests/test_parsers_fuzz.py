"""Every parser of untrusted bytes fails only with a ``QwardError`` (a named, clear error), never
with some other exception, whatever it is fed: random bytes and mutations of valid inputs."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.crypto.envelope import parse_sealed
from qward.encoding import canonical_json, parse_canonical_json
from qward.errors import QwardError
from qward.framing import read_frame, write_frame
from qward.receipts.receipt import ReceiptBundle
from qward.receipts.trust import TrustBundle
from qward.tensors import Tensor, decode_tensors, encode_tensors, tensors_from_json

from conftest import example_bytes

VALID_TENSORS = encode_tensors(
    [
        Tensor.from_numpy("a", np.arange(6, dtype=np.float32).reshape(2, 3)),
        Tensor.from_numpy("b", np.array([1, 2], dtype=np.int64)),
    ]
)
_frame = io.BytesIO()
write_frame(_frame, {"op": "run", "seed": 1}, b"payload")
VALID_FRAME = _frame.getvalue()
VALID_JSON = canonical_json({"a": [1, 2, {"b": "c"}], "d": True})
VALID_REQUEST = example_bytes("iris-request.json")


def _frame_parser(data: bytes) -> object:
    return read_frame(io.BytesIO(data), max_payload=1 << 16)


PARSERS: dict[str, tuple[Callable[[bytes], object], bytes]] = {
    "canonical_json": (lambda d: parse_canonical_json(d, what="fuzz"), VALID_JSON),
    "tensors": (decode_tensors, VALID_TENSORS),
    "request_json": (tensors_from_json, VALID_REQUEST),
    "sealed": (parse_sealed, b"QWSEAL\x00\x01" + b"\x00\x00\x00\x02{}"),
    "receipt": (ReceiptBundle.from_bytes, b'{"format":"qward/receipt-bundle/v1"}'),
    "trust": (TrustBundle.from_bytes, b'{"format":"qward/trust/v1"}'),
}


def _only_qward_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(QwardError):
        parse(data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512))
def test_random_bytes(name: str, data: bytes) -> None:
    _only_qward_errors(PARSERS[name][0], data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10_000),
)
def test_mutated_valid_input(name: str, edits: list[tuple[int, int]], cut: int) -> None:
    parse, valid = PARSERS[name]
    data = bytearray(valid)
    for position, value in edits:
        data[position % len(data)] = value
    _only_qward_errors(parse, bytes(data[: max(cut, len(data) // 2)]))


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
def test_mutated_frames(edits: list[tuple[int, int]]) -> None:
    data = bytearray(VALID_FRAME)
    for position, value in edits:
        data[position % len(data)] = value
    with contextlib.suppress(QwardError, EOFError):
        _frame_parser(bytes(data))


def test_valid_inputs_parse() -> None:
    """The seeds above are real inputs, so mutations start from something meaningful."""
    assert decode_tensors(VALID_TENSORS)[0].name == "a"
    assert _frame_parser(VALID_FRAME) == ({"op": "run", "seed": 1}, b"payload")
    assert parse_canonical_json(VALID_JSON, what="x")["d"] is True
    assert tensors_from_json(VALID_REQUEST)[0][0].shape == (3, 4)
