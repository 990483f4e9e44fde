"""The deterministic text-generation profile: fixed engine settings, sampling parameters, and the
token-level comparison a replay makes.

Pure (no llama.cpp): the worker, the core and a verifier can all parse and compare these records.
Canonical JSON has no floating-point numbers, so every real-valued sampling parameter is recorded
exactly as Python's ``float.hex()`` text (as circuit specs do); llama.cpp narrows it to a C
``float`` the same way on every run.

Why each engine setting is fixed: llama.cpp's results depend on how work is split. One thread for
decoding and one for batches keeps every reduction in one order; fixed ``n_batch`` and
``n_ubatch`` fix how a prompt is cut into micro-batches (matrix kernels differ by batch size);
a fixed ``n_ctx`` fixes the KV-cache layout; and the KV cache is cleared before every request, so
no earlier request's prefix is reused with a different split.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from qward.errors import InputError

__all__ = [
    "GENERATION_FORMAT",
    "GGUF_CONTENT_TYPE",
    "GGUF_MAGIC",
    "MAX_STOP_STRINGS",
    "N_BATCH",
    "N_CTX",
    "N_THREADS",
    "N_THREADS_BATCH",
    "N_UBATCH",
    "SamplingParameters",
    "TokenDivergence",
    "check_gguf_header",
    "engine_settings",
    "first_divergence",
    "is_gguf",
    "sampler_seed",
]

GGUF_MAGIC = b"GGUF"
#: GGUF has no registered media type; this one names the container for qward's records.
GGUF_CONTENT_TYPE = "application/x-gguf"
#: The format marker of a generation record.
GENERATION_FORMAT = "qward/generation/v1"

N_CTX = 2048
N_BATCH = 512
N_UBATCH = 512
N_THREADS = 1
N_THREADS_BATCH = 1
MAX_STOP_STRINGS = 4
_MAX_STOP_CHARS = 64
# llama.cpp treats this seed value as "pick one at random" (LLAMA_DEFAULT_SEED).
_LLAMA_RANDOM_SEED = 0xFFFFFFFF


_GGUF_HEADER = struct.Struct("<4sIQQ")
_GGUF_VERSIONS = (2, 3)
# Far above any real model (Gemma 3 270M has 236 tensors and 40 metadata keys); a header asking
# for more is refused before llama.cpp sizes anything by it.
_MAX_GGUF_TENSORS = 65536
_MAX_GGUF_KEYS = 65536


def is_gguf(data: bytes) -> bool:
    """Whether ``data`` starts with the GGUF magic (a claim about the container only)."""
    return data[:4] == GGUF_MAGIC


def check_gguf_header(data: bytes) -> None:
    """Refuse a GGUF whose fixed header is short, of an unknown version, or announces absurd
    counts (``InputError``); the rest is llama.cpp's to parse, inside the sandbox."""
    if len(data) < _GGUF_HEADER.size or not is_gguf(data):
        raise InputError("the model is not a GGUF file (no GGUF header)")
    _, version, tensors, keys = _GGUF_HEADER.unpack_from(data)
    if version not in _GGUF_VERSIONS:
        raise InputError(f"GGUF version {version} is not supported (2 or 3)")
    if tensors > _MAX_GGUF_TENSORS or keys > _MAX_GGUF_KEYS:
        raise InputError("the GGUF header announces too many tensors or metadata keys")


def engine_settings() -> dict[str, int | bool]:
    """The fixed llama.cpp context settings, as a receipt records them."""
    return {
        "n_ctx": N_CTX,
        "n_batch": N_BATCH,
        "n_ubatch": N_UBATCH,
        "n_threads": N_THREADS,
        "n_threads_batch": N_THREADS_BATCH,
        "use_mmap": True,
        "use_mlock": False,
        "flash_attn": False,
        "offload_kqv": False,
        "n_gpu_layers": 0,
        "kv_cache_cleared_per_request": True,
    }


def sampler_seed(seed: int) -> int:
    """The 32-bit seed handed to llama.cpp's sampler for a request ``seed``.

    llama.cpp seeds its sampler with a ``uint32_t`` and reads ``0xFFFFFFFF`` as "random", so the
    request seed is reduced modulo ``2**32 - 1``: never that value, and the same on every run.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InputError("seed must be a non-negative integer")
    return seed % _LLAMA_RANDOM_SEED


def _real(doc: dict[str, Any], key: str, default: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, str):
        try:
            value = float.fromhex(value)
        except ValueError:
            raise InputError(f"{key} must be a float.hex() string") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{key} must be a number")
    if not math.isfinite(value):
        raise InputError(f"{key} must be finite")
    return float(value)


def _integer(doc: dict[str, Any], key: str, default: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{key} must be an integer")
    return value


def _stops(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise InputError("stop must be a string or a list of strings")
    return tuple(value)


@dataclass(frozen=True, kw_only=True)
class SamplingParameters:
    """How tokens are chosen. ``temperature == 0`` is greedy (the other samplers are then
    unused); otherwise the chain is repeat penalty, top-k, top-p, min-p, temperature, then a
    draw seeded from the request. ``top_k == 0`` means no top-k cut."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    max_tokens: int = 128
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = (
            (0.0 <= self.temperature <= 2.0, "temperature must be from 0 to 2"),
            (0 <= self.top_k <= 1000, "top_k must be from 0 to 1000"),
            (0.0 < self.top_p <= 1.0, "top_p must be above 0 and at most 1"),
            (0.0 <= self.min_p < 1.0, "min_p must be from 0 to below 1"),
            (0.5 <= self.repeat_penalty <= 2.0, "repeat_penalty must be from 0.5 to 2"),
            (0 <= self.repeat_last_n <= N_CTX, f"repeat_last_n must be from 0 to {N_CTX}"),
            (1 <= self.max_tokens <= N_CTX, f"max_tokens must be from 1 to {N_CTX}"),
            (len(self.stop) <= MAX_STOP_STRINGS, f"at most {MAX_STOP_STRINGS} stop strings"),
            (
                all(0 < len(s) <= _MAX_STOP_CHARS for s in self.stop),
                f"each stop string must have 1 to {_MAX_STOP_CHARS} characters",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always taken (no randomness at all)."""
        return self.temperature == 0.0

    @classmethod
    def from_record(cls, doc: object) -> SamplingParameters:
        """Parse a request's or a receipt's parameters (reals as numbers or ``float.hex()``)."""
        if not isinstance(doc, dict):
            raise InputError("sampling parameters must be an object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise InputError(f"unknown sampling parameters: {', '.join(unknown)}")
        return cls(
            temperature=_real(doc, "temperature", 0.0),
            top_k=_integer(doc, "top_k", 40),
            top_p=_real(doc, "top_p", 0.95),
            min_p=_real(doc, "min_p", 0.05),
            repeat_penalty=_real(doc, "repeat_penalty", 1.0),
            repeat_last_n=_integer(doc, "repeat_last_n", 64),
            max_tokens=_integer(doc, "max_tokens", 128),
            stop=_stops(doc.get("stop")),
        )

    def record(self) -> dict[str, Any]:
        """The canonical-JSON form a receipt binds (reals as exact ``float.hex()`` text)."""
        return {
            "temperature": self.temperature.hex(),
            "top_k": self.top_k,
            "top_p": self.top_p.hex(),
            "min_p": self.min_p.hex(),
            "repeat_penalty": self.repeat_penalty.hex(),
            "repeat_last_n": self.repeat_last_n,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
        }


@dataclass(frozen=True, kw_only=True)
class TokenDivergence:
    """Where two token sequences first differ (``expected``/``actual`` are ``None`` past an end)."""

    index: int
    expected: int | None
    actual: int | None

    def describe(self) -> str:
        """One line for an error message or a replay verdict."""
        return f"token {self.index}: expected {self.expected}, got {self.actual}"


def first_divergence(expected: list[int], actual: list[int]) -> TokenDivergence | None:
    """The first index where ``actual`` differs from ``expected`` (a shorter or longer sequence
    diverges at the shorter one's length), or ``None`` if they are identical."""
    for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if want != got:
            return TokenDivergence(index=index, expected=want, actual=got)
    if len(expected) == len(actual):
        return None
    index = min(len(expected), len(actual))
    return TokenDivergence(
        index=index,
        expected=expected[index] if index < len(expected) else None,
        actual=actual[index] if index < len(actual) else None,
    )
