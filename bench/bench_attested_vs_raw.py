"""Attested run through qward versus raw in-process ONNX Runtime, on the same model, in one run.

    python bench/bench_attested_vs_raw.py [--requests N] [--runs 3]

For each model, the baseline is an in-process ``InferenceSession`` (default options) running one
request at a time; qward's path is the SDK end to end: seal the input (HPKE), the core's key-use
log entry, unseal, the sandboxed worker run over a pipe, the receipt entry and a freshly signed
checkpoint covering it (Ed25519 + ML-DSA-44) in one fsync, the inclusion proof, and the client's
offline verification of all of it. Both receipt settings run side by side: ``checkpoint`` (v2, the
default) and ``per-receipt`` (v1: also an ML-DSA-65 + Ed25519 signature on each receipt). Each
model is measured ``--runs`` times; the summary gives min/median/max of the added p50 latency.
Afterwards one traced pass per setting prints where the time goes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _breakdown import crypto_costs, floor_costs, print_breakdown, print_floor, span_means
from onnx import TensorProto, helper, numpy_helper

from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tensors import Tensor, tensors_from_json

# Issue 14's goal for the sequential SDK overhead on iris (p50), printed beside the floor.
_GOAL_MS = 1.5


def _mlp_model(width: int, depth: int) -> bytes:
    """A dense float MLP (MatMul + Relu) with fixed random weights: a heavier workload."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "X"
    for i in range(depth):
        w = numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"W{i}"
        )
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["Y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _time(fn: Callable[[], object], n: int) -> list[float]:
    fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    rate = len(samples) / sum(samples)
    return f"p50 {p50 * 1e3:8.3f} ms  p99 {p99 * 1e3:8.3f} ms  {rate:9.1f} req/s"


def _p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def bench(
    name: str, model: bytes, inputs: tuple[Tensor, ...], sdk: Client, n: int, runs: int
) -> list[float]:
    """Time raw ORT and qward on one model ``runs`` times; the added p50 ms of each run."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feed = {t.name: t.to_numpy() for t in inputs}
    info = sdk.register(model, name=name)
    added = []
    for run in range(runs):
        raw = _time(lambda: session.run(None, feed), n)
        attested = _time(lambda: sdk.run(info.model_sha256, inputs, seed=1), n)
        added.append((_p50(attested) - _p50(raw)) * 1e3)
        print(f"  {name} run {run + 1}: raw ORT {_summary(raw)}")
        print(f"  {name} run {run + 1}: qward   {_summary(attested)}  (+{added[-1]:.3f} ms p50)")
    return added


def _models() -> list[tuple[str, bytes, tuple[Tensor, ...]]]:
    examples = resources.files("qward.examples")
    iris_inputs, _ = tensors_from_json(examples.joinpath("iris-request.json").read_bytes())
    mlp_inputs = (
        Tensor.from_numpy(
            "X", np.random.default_rng(1).standard_normal((8, 1024)).astype(np.float32)
        ),
    )
    return [
        ("iris-mlp", examples.joinpath("iris-mlp.onnx").read_bytes(), iris_inputs),
        ("dense-1024x6", _mlp_model(1024, 6), mlp_inputs),
    ]


def _setting(signing: str, requests: int, runs: int) -> dict[str, list[float]]:
    os.environ["QWARD_RECEIPT_SIGNATURES"] = signing
    added: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as state:
        core = CoreProcess.start(Path(state))
        try:
            with core.client() as connection:
                sdk = Client(connection, trust=connection.trust())
                for name, model, inputs in _models():
                    added[name] = bench(name, model, inputs, sdk, requests, runs)
        finally:
            core.stop()
    return added


def _traced(signing: str, requests: int) -> None:
    """One pass with the core's spans on: the per-request budget on iris."""
    name, model, inputs = _models()[0]
    with tempfile.TemporaryDirectory() as state:
        trace = Path(state) / "spans.jsonl"
        os.environ.update(QWARD_RECEIPT_SIGNATURES=signing, QWARD_TRACE_FILE=str(trace))
        core = CoreProcess.start(Path(state) / "core")
        del os.environ["QWARD_TRACE_FILE"]
        try:
            with core.client() as connection:
                sdk = Client(connection, trust=connection.trust())
                info = sdk.register(model, name=name)
                _time(lambda: sdk.run(info.model_sha256, inputs, seed=1), 20)
                trace.write_text("")
                samples = _time(lambda: sdk.run(info.model_sha256, inputs, seed=1), requests)
        finally:
            core.stop()
        print_breakdown(
            f"{name}, {signing}", statistics.mean(samples) * 1e3, span_means(trace, requests + 1)
        )


def main() -> None:
    """Both receipt settings on the bundled iris model and a heavier dense MLP, then budgets."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for signing in ("checkpoint", "per-receipt"):
        print(f"receipt signatures: {signing}")
        results[signing] = _setting(signing, args.requests, args.runs)
    print("\nadded latency per sequential request, p50 over each run (min / median / max):")
    for signing, per_model in results.items():
        for name, added in per_model.items():
            print(
                f"  {signing:11s} {name:13s} {min(added):6.3f} / "
                f"{statistics.median(added):6.3f} / {max(added):6.3f} ms"
            )
    print()
    for signing in ("checkpoint", "per-receipt"):
        _traced(signing, args.requests)
    examples = resources.files("qward.examples")
    inputs, _ = tensors_from_json(examples.joinpath("iris-request.json").read_bytes())
    with tempfile.TemporaryDirectory() as state:
        core = CoreProcess.start(Path(state))
        try:
            with core.client() as connection:
                trust = connection.trust()
        finally:
            core.stop()
        # Timed after the core has stopped: on two CPUs it would otherwise share them.
        print_floor(crypto_costs(trust, inputs), floor_costs(Path(state)), _GOAL_MS)


if __name__ == "__main__":
    main()
