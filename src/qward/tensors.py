"""Named tensors and their canonical binary encoding.

A request's inputs and a run's outputs are sets of named tensors. Their digests in a receipt are
SHA-256 over one canonical encoding, so "bit-identical output" has a precise meaning: same names,
same datatypes, same shapes and the same little-endian bytes.

Encoding (all integers big-endian)::

    b"QWT1" | u32 count | per tensor, sorted by name:
        u16 len | name (UTF-8) | u8 len | datatype (ASCII) | u8 ndim | ndim * u64 dim
        | u64 nbytes | raw little-endian C-order bytes
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qward.encoding import sha256_hex
from qward.errors import FormatError, InputError

__all__ = [
    "DATATYPES",
    "MAX_TENSOR_BYTES",
    "Tensor",
    "decode_tensors",
    "encode_tensors",
    "tensors_digest",
    "tensors_from_json",
    "tensors_to_json",
]

_MAGIC = b"QWT1"
MAX_TENSOR_BYTES = 256 * 1024 * 1024
_MAX_TENSORS = 256
_MAX_NDIM = 16

#: KServe V2 datatype names and the little-endian numpy dtypes they map to.
DATATYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}


@dataclass(frozen=True, kw_only=True)
class Tensor:
    """One named tensor held as raw little-endian bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode("utf-8")) > 1024:
            raise InputError("tensor name must be 1 to 1024 bytes of UTF-8")
        if self.datatype not in DATATYPES:
            raise InputError(f"tensor {self.name!r}: unsupported datatype {self.datatype!r}")
        if len(self.shape) > _MAX_NDIM or any(d < 0 for d in self.shape):
            raise InputError(f"tensor {self.name!r}: invalid shape {list(self.shape)}")
        expected = math.prod(self.shape) * DATATYPES[self.datatype].itemsize
        if expected != len(self.data):
            raise InputError(
                f"tensor {self.name!r}: shape {list(self.shape)} of {self.datatype} needs "
                f"{expected} bytes, got {len(self.data)}"
            )

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray[Any, Any]) -> Tensor:
        """Build a tensor from a numpy array (copied into little-endian C order)."""
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _BY_DTYPE:
            raise InputError(f"tensor {name!r}: numpy dtype {array.dtype} is not supported")
        contiguous = np.ascontiguousarray(array, dtype=dtype)
        return cls(
            name=name,
            datatype=_BY_DTYPE[dtype],
            shape=tuple(int(d) for d in array.shape),
            data=contiguous.tobytes(),
        )

    def to_numpy(self) -> np.ndarray[Any, Any]:
        """A read-only numpy view of the tensor."""
        return np.frombuffer(self.data, dtype=DATATYPES[self.datatype]).reshape(self.shape)


def encode_tensors(tensors: Iterable[Tensor]) -> bytes:
    """Canonical encoding of a set of tensors (sorted by name; names must be unique)."""
    ordered = sorted(tensors, key=lambda t: t.name.encode("utf-8"))
    names = [t.name for t in ordered]
    if len(set(names)) != len(names):
        raise InputError("tensor names must be unique")
    parts = [_MAGIC, struct.pack(">I", len(ordered))]
    for t in ordered:
        name = t.name.encode("utf-8")
        dtype = t.datatype.encode("ascii")
        parts.append(struct.pack(">H", len(name)) + name + struct.pack(">B", len(dtype)) + dtype)
        parts.append(
            struct.pack(">B", len(t.shape)) + b"".join(struct.pack(">Q", d) for d in t.shape)
        )
        parts.append(struct.pack(">Q", len(t.data)))
        parts.append(t.data)
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError("tensor encoding is truncated")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return int(value)


def decode_tensors(data: bytes) -> tuple[Tensor, ...]:
    """Decode the canonical encoding, rejecting anything that would not re-encode identically."""
    reader = _Reader(data)
    if reader.take(4) != _MAGIC:
        raise FormatError("tensor encoding: bad magic")
    count = reader.unpack(">I")
    if count > _MAX_TENSORS:
        raise FormatError(f"tensor encoding: {count} tensors is over the limit of {_MAX_TENSORS}")
    out = []
    for _ in range(count):
        try:
            name = reader.take(reader.unpack(">H")).decode("utf-8")
            datatype = reader.take(reader.unpack(">B")).decode("ascii")
        except UnicodeDecodeError:
            raise FormatError("tensor encoding: name or datatype is not text") from None
        ndim = reader.unpack(">B")
        if ndim > _MAX_NDIM:
            raise FormatError(f"tensor encoding: {ndim} dimensions is over the limit")
        shape = tuple(reader.unpack(">Q") for _ in range(ndim))
        nbytes = reader.unpack(">Q")
        if nbytes > MAX_TENSOR_BYTES:
            raise FormatError(f"tensor encoding: tensor of {nbytes} bytes is over the limit")
        try:
            out.append(Tensor(name=name, datatype=datatype, shape=shape, data=reader.take(nbytes)))
        except InputError as exc:
            raise FormatError(f"tensor encoding: {exc}") from None
    if reader.pos != len(data):
        raise FormatError("tensor encoding: trailing bytes")
    if encode_tensors(out) != data:
        raise FormatError("tensor encoding: not canonical (tensors must be sorted and unique)")
    return tuple(out)


def tensors_digest(tensors: Iterable[Tensor]) -> str:
    """Hex SHA-256 of the canonical encoding."""
    return sha256_hex(encode_tensors(tensors))


def _reject_constant(text: str) -> Any:
    raise InputError(f"inference request: {text} is not a number qward accepts")


def tensors_from_json(data: bytes) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    """Parse a KServe V2 style JSON request: ``{"inputs": [...], "parameters": {...}}``.

    Returns the tensors and the request parameters. Every problem is an ``InputError`` naming the
    offending field.
    """
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError("inference request: not valid UTF-8 JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InputError('inference request: expected an object with a non-empty "inputs" list')
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise InputError('inference request: "parameters" must be an object')
    tensors = [_tensor_from_json(i, item) for i, item in enumerate(doc["inputs"])]
    encode_tensors(tensors)  # rejects duplicate names
    return tuple(tensors), params


def _tensor_from_json(index: int, item: object) -> Tensor:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object")
    name, datatype, shape, values = (item.get(k) for k in ("name", "datatype", "shape", "data"))
    if not isinstance(name, str):
        raise InputError(f'{where}: "name" must be a string')
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InputError(f"{where} ({name}): unsupported datatype {datatype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InputError(f'{where} ({name}): "shape" must be a list of non-negative integers')
    if not isinstance(values, list):
        raise InputError(f'{where} ({name}): "data" must be a list')
    try:
        array = np.asarray(values, dtype=DATATYPES[datatype])
    except (ValueError, TypeError, OverflowError):
        raise InputError(f"{where} ({name}): data does not fit datatype {datatype}") from None
    if array.size != math.prod(shape):
        raise InputError(f"{where} ({name}): {array.size} values do not fill shape {shape}")
    return Tensor.from_numpy(name, array.reshape(shape))


def tensors_to_json(tensors: Iterable[Tensor]) -> list[dict[str, Any]]:
    """KServe V2 style output objects (name, datatype, shape, flat data)."""
    return [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.shape),
            "data": t.to_numpy().reshape(-1).tolist(),
        }
        for t in sorted(tensors, key=lambda t: t.name)
    ]
