"""The one canonical encoding for everything qward hashes or signs.

Canonical JSON here is a strict subset of RFC 8785: objects with keys sorted by code point, no
insignificant whitespace, UTF-8, and no floating-point numbers (integers, strings, booleans, null,
lists and objects only), so that every value has exactly one byte representation. Parsers reject
duplicate keys and any input that is not byte-for-byte canonical, which makes every single-byte
change to a signed artifact detectable before any signature is even checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from qward.errors import FormatError, InputError

__all__ = [
    "b64decode",
    "b64encode",
    "canonical_json",
    "domain_hash",
    "parse_canonical_json",
    "read_limited",
    "recanonicalize_json",
    "sha256_hex",
]

JSONValue = Any


def _check_value(value: JSONValue, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) >= 2**53:
            raise FormatError(f"{path}: integer {value} is outside the interoperable range")
        return
    if isinstance(value, float):
        raise FormatError(f"{path}: floating-point numbers are not allowed in canonical JSON")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FormatError(f"{path}: object key {key!r} is not a string")
            _check_value(item, f"{path}.{key}")
        return
    raise FormatError(f"{path}: value of type {type(value).__name__} cannot be encoded")


_LIMIT = 2**53


def _is_canonical(value: JSONValue) -> bool:
    """The check of ``_check_value`` without building paths: the fast path for valid values.

    Exact type tests keep it cheap on the common types; anything else (subclasses, other
    mappings) goes to ``_check_value``'s slow path by answering False.
    """
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -_LIMIT < item < _LIMIT:
                return False
        elif kind is dict:
            for key in item:
                if type(key) is not str:
                    return False
            extend(item.values())
        elif kind is list or kind is tuple:
            extend(item)
        else:
            return False
    return True


def canonical_json(value: JSONValue) -> bytes:
    """Encode ``value`` as canonical JSON bytes (sorted keys, compact, UTF-8, no floats)."""
    if not _is_canonical(value):
        # Walks again with paths: names what is wrong, or accepts what the fast path left to it.
        _check_value(value, "$")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _reject_duplicates(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_float(text: str) -> JSONValue:
    raise FormatError(f"floating-point number {text} is not allowed")


def recanonicalize_json(data: bytes, *, what: str) -> bytes:
    """The canonical form of a JSON object that may have been re-indented (by ``jq .``, say).

    Sound for signed documents: duplicate keys and floats are still refused, so the canonical
    bytes say exactly what the given bytes say, and a signature over them still decides.
    """
    return canonical_json(_parse_object(data, what=what))


def parse_canonical_json(data: bytes, *, what: str) -> dict[str, JSONValue]:
    """Parse ``data`` as a canonical JSON object, raising ``FormatError`` naming ``what``."""
    value = _parse_object(data, what=what)
    if canonical_json(value) != data:
        raise FormatError(f"{what}: not in canonical form (sorted keys, no whitespace)")
    return value


def _parse_object(data: bytes, *, what: str) -> dict[str, JSONValue]:
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_float,
        )
    except FormatError as exc:
        raise FormatError(f"{what}: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError(f"{what}: not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what}: expected a JSON object")
    return value


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, as used by C2SP notes and qward artifacts."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, *, what: str) -> bytes:
    """Decode strict, canonical standard base64; anything else is a ``FormatError``."""
    if not isinstance(text, str):
        raise FormatError(f"{what}: expected a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise FormatError(f"{what}: not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise FormatError(f"{what}: base64 is not canonical")
    return raw


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def domain_hash(label: str, data: bytes) -> bytes:
    """SHA-256 over a length-prefixed domain label and ``data``."""
    encoded = label.encode("ascii")
    return hashlib.sha256(len(encoded).to_bytes(2, "big") + encoded + data).digest()


def read_limited(path: str, *, limit: int, what: str) -> bytes:
    """Read at most ``limit`` bytes from ``path``; a larger or unreadable file is an error."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{what}: file {path!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what}: {path!r} is a directory") from None
    except PermissionError:
        raise InputError(f"{what}: permission denied reading {path!r}") from None
    if len(data) > limit:
        raise InputError(f"{what}: {path!r} is larger than the limit of {limit} bytes")
    return data
