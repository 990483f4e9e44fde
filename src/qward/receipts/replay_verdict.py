"""Replay verdicts across machines.

Same platform class and same environment (the digest of every installed distribution and its
version): outputs must be bit-identical, nothing less. Different platform or environment: the
kernels may legitimately round differently, so the verdict is a declared tolerance against the
*original* outputs, which the replayer supplies and which are authenticated by the receipt's output
digest: integer and boolean tensors (labels) must match exactly, floating-point elements must
satisfy ``|replay - original| <= MAX_ABS + MAX_REL * |original|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qward.errors import VerificationError
from qward.receipts.circuit import circuit_differences
from qward.tensors import Tensor, tensors_digest

__all__ = [
    "BITWISE",
    "MAX_ABS",
    "MAX_REL",
    "MISMATCH",
    "WITHIN_TOLERANCE",
    "ReplayVerdict",
    "judge",
    "same_environment",
]

MAX_ABS = 1e-4
MAX_REL = 1e-3
BITWISE = "bitwise-identical"
WITHIN_TOLERANCE = "within-tolerance"
MISMATCH = "mismatch"


@dataclass(frozen=True, kw_only=True)
class ReplayVerdict:
    """The outcome of a replay and why."""

    verdict: str
    same_environment: bool
    max_abs: float
    max_rel: float
    detail: str


def _environment(runtime: dict[str, Any]) -> tuple[object, object]:
    return runtime.get("platform_class"), runtime.get("libraries", {}).get("environment_sha256")


def same_environment(original: dict[str, Any], replay: dict[str, Any]) -> bool:
    """Whether two runtime records name the same platform class and installed environment."""
    return _environment(original) == _environment(replay)


def _compare(
    original: Sequence[Tensor], replay: Sequence[Tensor]
) -> tuple[bool, float, float, str]:
    by_name = {t.name: t for t in replay}
    worst_abs = worst_rel = 0.0
    for expected in original:
        got = by_name.get(expected.name)
        if got is None or got.datatype != expected.datatype or got.shape != expected.shape:
            return (
                False,
                worst_abs,
                worst_rel,
                f"output {expected.name!r} differs in name, type or shape",
            )
        a, b = expected.to_numpy(), got.to_numpy()
        if a.dtype.kind not in "fc":
            if not np.array_equal(a, b):
                return False, worst_abs, worst_rel, f"output {expected.name!r} (exact) differs"
            continue
        diff = np.abs(b.astype(np.float64) - a.astype(np.float64))
        if diff.size:
            worst_abs = max(worst_abs, float(diff.max()))
            worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(a), 1e-30)).max()))
            if not bool(np.all(diff <= MAX_ABS + MAX_REL * np.abs(a))):
                return False, worst_abs, worst_rel, f"output {expected.name!r} is out of tolerance"
    if set(by_name) != {t.name for t in original}:
        return False, worst_abs, worst_rel, "replay produced a different set of outputs"
    return True, worst_abs, worst_rel, "all outputs within tolerance, labels exact"


def judge(
    *,
    body: dict[str, Any],
    replay_runtime: dict[str, Any],
    replay_outputs: Sequence[Tensor],
    original_outputs: Sequence[Tensor] | None = None,
) -> ReplayVerdict:
    """Judge a replay of the receipt ``body`` that ran under ``replay_runtime``.

    For a circuit receipt, ``replay_runtime["circuit"]`` is the replay's compiled-circuit record;
    any difference from the receipt's is a mismatch whatever the outputs are.
    """
    same = same_environment(body["runtime"], replay_runtime)
    if "circuit" in body["runtime"]:
        differences = circuit_differences(body["runtime"]["circuit"], replay_runtime.get("circuit"))
        if differences:
            return ReplayVerdict(
                verdict=MISMATCH,
                same_environment=same,
                max_abs=float("nan"),
                max_rel=float("nan"),
                detail="the compiled circuit differs from the receipt's: " + ", ".join(differences),
            )
    if tensors_digest(replay_outputs) == body["output"]["sha256"]:
        return ReplayVerdict(
            verdict=BITWISE,
            same_environment=same,
            max_abs=0.0,
            max_rel=0.0,
            detail="outputs are bit-identical",
        )
    if same:
        return ReplayVerdict(
            verdict=MISMATCH,
            same_environment=True,
            max_abs=float("nan"),
            max_rel=float("nan"),
            detail="same platform class and environment, yet different bytes",
        )
    if original_outputs is None:
        return ReplayVerdict(
            verdict=MISMATCH,
            same_environment=False,
            max_abs=float("nan"),
            max_rel=float("nan"),
            detail="different environment: supply the original outputs for a tolerance verdict",
        )
    if tensors_digest(original_outputs) != body["output"]["sha256"]:
        raise VerificationError(
            "the supplied original outputs are not the ones the receipt records"
        )
    ok, worst_abs, worst_rel, detail = _compare(original_outputs, replay_outputs)
    return ReplayVerdict(
        verdict=WITHIN_TOLERANCE if ok else MISMATCH,
        same_environment=False,
        max_abs=worst_abs,
        max_rel=worst_rel,
        detail=detail,
    )
