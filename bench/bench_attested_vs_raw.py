"""Attested run through qward versus raw in-process ONNX Runtime, on the same model, in one run.

    python bench/bench_attested_vs_raw.py [--requests N]

For each model, the baseline is an in-process ``InferenceSession`` (default options) running one
request at a time; qward's path is the SDK end to end: seal the input (HPKE), the core's key-use
log entry, unseal, the sandboxed worker run over a pipe, receipt signing (ML-DSA-65 + Ed25519),
the log append with a freshly signed checkpoint (Ed25519 + ML-DSA-44), the inclusion proof, and the
client's offline verification of all of it. Prints latency percentiles, throughput and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tensors import Tensor, tensors_from_json


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


def bench(name: str, model: bytes, inputs: tuple[Tensor, ...], sdk: Client, n: int) -> None:
    """Time raw ORT and qward on one model and print both with their ratio."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feed = {t.name: t.to_numpy() for t in inputs}
    raw = _time(lambda: session.run(None, feed), n)
    info = sdk.register(model, name=name)
    attested = _time(lambda: sdk.run(info.model_sha256, inputs, seed=1), n)
    ratio = statistics.mean(attested) / statistics.mean(raw)
    print(f"{name}: raw ORT    {_summary(raw)}")
    print(f"{name}: qward      {_summary(attested)}")
    added_ms = (statistics.mean(attested) - statistics.mean(raw)) * 1e3
    print(
        f"{name}: qward/raw mean latency ratio {ratio:.1f}x "
        f"(throughput {1 / ratio:.4f}x of raw; {added_ms:.2f} ms added per request)"
    )


def main() -> None:
    """Run the benchmark on the bundled iris model and a heavier dense MLP."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    examples = resources.files("qward.examples")
    iris_inputs, _ = tensors_from_json(examples.joinpath("iris-request.json").read_bytes())
    mlp_inputs = (
        Tensor.from_numpy(
            "X", np.random.default_rng(1).standard_normal((8, 1024)).astype(np.float32)
        ),
    )
    with tempfile.TemporaryDirectory() as state:
        core = CoreProcess.start(Path(state))
        try:
            with core.client() as connection:
                sdk = Client(connection, trust=connection.trust())
                bench(
                    "iris-mlp",
                    examples.joinpath("iris-mlp.onnx").read_bytes(),
                    iris_inputs,
                    sdk,
                    args.requests,
                )
                bench("dense-1024x6", _mlp_model(1024, 6), mlp_inputs, sdk, args.requests)
        finally:
            core.stop()


if __name__ == "__main__":
    main()
