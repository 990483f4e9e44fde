"""Replay verdicts: bitwise on the same platform and environment, a declared tolerance elsewhere."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qward.errors import VerificationError
from qward.receipts.replay_verdict import (
    BITWISE,
    MAX_ABS,
    MISMATCH,
    WITHIN_TOLERANCE,
    judge,
)
from qward.tensors import Tensor, tensors_digest

LABELS = np.array([0, 1, 2], dtype=np.int64)
PROBS = np.array([[0.98, 0.01, 0.01], [0.02, 0.97, 0.01], [0.0, 0.003, 0.997]], dtype=np.float32)
ORIGINAL = (Tensor.from_numpy("label", LABELS), Tensor.from_numpy("probabilities", PROBS))
HERE = {"platform_class": "linux-x86_64-glibc2.36-avx2", "libraries": {"environment_sha256": "a"}}
ELSEWHERE = {
    "platform_class": "linux-aarch64-glibc2.36-asimd",
    "libraries": {"environment_sha256": "b"},
}


def _body(runtime: dict[str, Any] = HERE) -> dict[str, Any]:
    return {"runtime": runtime, "output": {"sha256": tensors_digest(ORIGINAL)}}


def _replay(probs: np.ndarray, labels: np.ndarray = LABELS) -> tuple[Tensor, ...]:
    return (Tensor.from_numpy("label", labels), Tensor.from_numpy("probabilities", probs))


def test_identical_bytes_are_bitwise_anywhere() -> None:
    for runtime in (HERE, ELSEWHERE):
        assert (
            judge(body=_body(), replay_runtime=runtime, replay_outputs=ORIGINAL).verdict == BITWISE
        )


def test_same_environment_allows_no_difference() -> None:
    nudged = _replay(PROBS + np.float32(1e-7))
    verdict = judge(
        body=_body(), replay_runtime=HERE, replay_outputs=nudged, original_outputs=ORIGINAL
    )
    assert verdict.verdict == MISMATCH and verdict.same_environment


@given(st.floats(min_value=-MAX_ABS / 2, max_value=MAX_ABS / 2))
def test_other_environment_within_tolerance(delta: float) -> None:
    nudged = _replay((PROBS.astype(np.float64) + delta).astype(np.float32))
    verdict = judge(
        body=_body(), replay_runtime=ELSEWHERE, replay_outputs=nudged, original_outputs=ORIGINAL
    )
    assert verdict.verdict in (WITHIN_TOLERANCE, BITWISE)
    assert not verdict.same_environment


def test_other_environment_out_of_tolerance_or_label_change() -> None:
    far = _replay(PROBS + np.float32(1e-2))
    assert (
        judge(
            body=_body(), replay_runtime=ELSEWHERE, replay_outputs=far, original_outputs=ORIGINAL
        ).verdict
        == MISMATCH
    )
    relabelled = _replay(PROBS + np.float32(1e-7), np.array([0, 2, 2], dtype=np.int64))
    verdict = judge(
        body=_body(), replay_runtime=ELSEWHERE, replay_outputs=relabelled, original_outputs=ORIGINAL
    )
    assert verdict.verdict == MISMATCH and "label" in verdict.detail


def test_other_environment_needs_the_original_outputs() -> None:
    verdict = judge(
        body=_body(), replay_runtime=ELSEWHERE, replay_outputs=_replay(PROBS + np.float32(1e-7))
    )
    assert verdict.verdict == MISMATCH and "supply the original outputs" in verdict.detail


def test_forged_original_outputs_are_refused() -> None:
    forged = _replay(PROBS + np.float32(1e-2))
    with pytest.raises(VerificationError, match="not the ones the receipt records"):
        judge(
            body=_body(), replay_runtime=ELSEWHERE, replay_outputs=forged, original_outputs=forged
        )
