"""The sandboxed worker: deterministic, honest about its isolation, and robust to bad input."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qward.errors import InputError, RuntimeFailure
from qward.runtime.supervisor import WorkerPolicy, WorkerProcess
from qward.tensors import Tensor

from conftest import example_bytes, iris_inputs

IRIS = example_bytes("iris-mlp.onnx")


def _start(model: bytes, **kwargs: object) -> WorkerProcess:
    return WorkerProcess.start(
        model=model, model_sha256=hashlib.sha256(model).hexdigest(), **kwargs
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with _start(IRIS) as process:
        yield process


def _graph(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> bytes:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _random_model() -> bytes:
    """A graph whose output comes from RandomNormal with no seed of its own."""
    return _graph(
        [
            helper.make_node("RandomNormalLike", ["X"], ["noise"]),
            helper.make_node("Add", ["X", "noise"], ["Y"]),
        ],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
    )


def test_outputs_match_plain_onnxruntime_and_are_bitwise_stable(worker: WorkerProcess) -> None:
    inputs, seed = iris_inputs()
    first = worker.run(inputs, seed=seed)
    with _start(IRIS) as other:
        assert other.run(inputs, seed=seed) == first
    assert worker.run(inputs, seed=seed) == first
    plain = ort.InferenceSession(IRIS, providers=["CPUExecutionProvider"])
    labels, probabilities = plain.run(None, {"X": inputs[0].to_numpy()})
    got = {t.name: t.to_numpy() for t in first}
    assert got["label"].tolist() == labels.tolist()
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=1e-5)


def test_seed_from_the_request_drives_randomness() -> None:
    x = (Tensor.from_numpy("X", np.zeros(4, dtype=np.float32)),)
    with _start(_random_model()) as process:
        a, again, b = (process.run(x, seed=s) for s in (7, 7, 8))
    assert a == again
    assert a != b
    # ONNX Runtime seeds these operators when a session is built, so the worker rebuilds it.
    assert process.info["session_options"]["fresh_session_per_request"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox is checked as root, like CI")
def test_every_layer_enforced_and_every_probe_refused(worker: WorkerProcess) -> None:
    isolation = worker.info["isolation"]
    assert isolation["degraded"] == []
    assert set(isolation["layers"]) == {
        "capabilities",
        "landlock",
        "mount_namespace",
        "network_namespace",
        "no_new_privs",
        "rlimits",
        "seccomp",
        "seccomp_denylist",
        "user_namespace",
        "uts_ipc_namespaces",
    }
    assert isolation["probes"], "the self-check ran no probe"
    assert all(v.startswith("refused") for v in isolation["probes"].values()), isolation["probes"]
    assert "no hardware" in isolation["mechanism"]


def test_worker_records_the_deterministic_profile(worker: WorkerProcess) -> None:
    options = worker.info["session_options"]
    assert (options["intra_op_num_threads"], options["inter_op_num_threads"]) == (1, 1)
    assert options["execution_mode"] == "ORT_SEQUENTIAL"
    assert options["fresh_session_per_request"] is False  # the iris model draws no randomness
    assert options["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    assert worker.info["libraries"]["onnxruntime"] == ort.__version__
    assert worker.info["platform_class"].startswith("linux-")


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (Tensor.from_numpy("Y", np.zeros((1, 4), np.float32)), "expects inputs"),
        (Tensor.from_numpy("X", np.zeros((1, 4), np.float64)), "'X' must be FP32"),
        (Tensor.from_numpy("X", np.zeros((1, 5), np.float32)), "'X' must have shape"),
        (Tensor.from_numpy("X", np.zeros((4,), np.float32)), "'X' must have shape"),
    ],
)
def test_bad_input_is_named_and_worker_survives(
    worker: WorkerProcess, tensor: Tensor, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        worker.run((tensor,), seed=1)
    inputs, seed = iris_inputs()
    assert worker.run(inputs, seed=seed)


def test_digest_mismatch_is_refused() -> None:
    with pytest.raises(InputError, match="model_sha256"):
        WorkerProcess.start(model=IRIS, model_sha256="0" * 64)


def test_garbage_model_is_refused() -> None:
    with pytest.raises(InputError, match="not an ONNX model"):
        _start(b"\x08\x07 definitely not an onnx model")


def test_killed_worker_is_a_runtime_failure_not_a_hang() -> None:
    process = _start(IRIS)
    os.kill(process.pid, signal.SIGKILL)
    inputs, seed = iris_inputs()
    with pytest.raises(RuntimeFailure, match="died"):
        process.run(inputs, seed=seed)
    with pytest.raises(RuntimeFailure, match="died"):
        process.run(inputs, seed=seed)
    assert not process.alive
    process.close()


def test_memory_cap_stops_a_huge_allocation() -> None:
    model = _graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["Y"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
            )
        ],
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])],
    )
    with _start(model, policy=WorkerPolicy(memory_limit=1024 * 1024 * 1024)) as process:
        huge = (Tensor.from_numpy("shape", np.array([2 * 1024**3], dtype=np.int64)),)
        with pytest.raises(RuntimeFailure):
            process.run(huge, seed=1)
        small = (Tensor.from_numpy("shape", np.array([3], dtype=np.int64)),)
        assert process.run(small, seed=1)[0].to_numpy().tolist() == [1.0, 1.0, 1.0]


def test_timeout_kills_the_worker() -> None:
    width = 2048
    model = _graph(
        [
            helper.make_node("MatMul", ["X", "X"], [f"h{i}"])
            if i == 0
            else helper.make_node("MatMul", [f"h{i - 1}", "X"], [f"h{i}"])
            for i in range(40)
        ]
        + [helper.make_node("Identity", ["h39"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [width, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [width, width])],
    )
    x = (Tensor.from_numpy("X", np.full((width, width), 1e-3, np.float32)),)
    with _start(model) as process:
        with pytest.raises(RuntimeFailure, match="did not answer"):
            process.run(x, seed=1, timeout=0.2)
        assert not process.alive
