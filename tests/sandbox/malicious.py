"""Hostile ONNX models, built by code (``onnx.helper``), for the sandbox tests.

Each is named after the attack it tries; the tests show every layer refuses or contains it.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

__all__ = [
    "KEYSTORE_PATH",
    "amplification_model",
    "constant_memory_bomb_model",
    "external_data_model",
    "huge_declared_input_model",
    "loop_model",
]

#: Where the core keeps its key, relative to its state directory (issue 10.1).
KEYSTORE_PATH = ".qward/keystore.key"


def _serialize(graph: onnx.GraphProto, *, check: bool = True) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    return model.SerializeToString()


def _external_tensor(name: str, location: str, length: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[length])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def external_data_model(where: str = "initializer", *, location: str = KEYSTORE_PATH) -> bytes:
    """A model whose output is the bytes of the file at ``location`` (read by ONNX Runtime as
    external data, relative to the working directory), hidden in ``where``: ``initializer``,
    ``sparse`` (a sparse initializer's values), ``attribute`` (a Constant node's tensor) or
    ``subgraph`` (an If branch's initializer)."""
    leak = _external_tensor("leak", location, 32)
    out = [helper.make_tensor_value_info("Y", TensorProto.UINT8, [32])]
    inp = [helper.make_tensor_value_info("X", TensorProto.UINT8, [1])]
    if where == "initializer":
        graph = helper.make_graph(
            [helper.make_node("Identity", ["leak"], ["Y"])], "leak", inp, out, [leak]
        )
    elif where == "sparse":
        indices = helper.make_tensor("idx", TensorProto.INT64, [32], list(range(32)))
        sparse = helper.make_sparse_tensor(leak, indices, [32])
        graph = helper.make_graph([helper.make_node("Identity", ["leak"], ["Y"])], "leak", inp, out)
        graph.sparse_initializer.append(sparse)
    elif where == "attribute":
        graph = helper.make_graph(
            [helper.make_node("Constant", [], ["Y"], value=leak)], "leak", inp, out
        )
    elif where == "subgraph":
        branch = helper.make_graph(
            [helper.make_node("Identity", ["leak"], ["Z"])],
            "branch",
            [],
            [helper.make_tensor_value_info("Z", TensorProto.UINT8, [32])],
            [leak],
        )
        graph = helper.make_graph(
            [
                helper.make_node("Cast", ["X"], ["c"], to=TensorProto.BOOL),
                helper.make_node("Squeeze", ["c"], ["cond"]),
                helper.make_node("If", ["cond"], ["Y"], then_branch=branch, else_branch=branch),
            ],
            "leak",
            inp,
            out,
        )
    else:
        raise AssertionError(where)
    return _serialize(graph, check=False)


def amplification_model() -> bytes:
    """Output = a scalar input broadcast to the shape given by a second input (Expand): a few
    input bytes ask for as many output bytes as they like (issue 10.5)."""
    return _serialize(
        helper.make_graph(
            [helper.make_node("Expand", ["X", "shape"], ["Y"])],
            "amplify",
            [
                helper.make_tensor_value_info("X", TensorProto.FLOAT, [1]),
                helper.make_tensor_value_info("shape", TensorProto.INT64, [1]),
            ],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])],
        )
    )


def loop_model() -> bytes:
    """A Loop whose trip count is an input: a huge one runs until the deadline kills it."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    return _serialize(
        helper.make_graph(
            [helper.make_node("Loop", ["M", "", "start"], ["Y"], body=body)],
            "loop",
            [
                helper.make_tensor_value_info("M", TensorProto.INT64, []),
                helper.make_tensor_value_info("start", TensorProto.FLOAT, [1]),
            ],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
        )
    )


def constant_memory_bomb_model(elements: int = 1 << 40) -> bytes:
    """ConstantOfShape with a huge constant shape: no input at all asks for terabytes."""
    return _serialize(
        helper.make_graph(
            [
                helper.make_node(
                    "ConstantOfShape",
                    ["shape"],
                    ["Y"],
                    value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
                )
            ],
            "bomb",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])],
            [helper.make_tensor("shape", TensorProto.INT64, [1], [elements])],
        )
    )


def huge_declared_input_model(side: int = 100_000) -> bytes:
    """An input declared as a side x side float matrix (40 GB for the default): warming the
    model up would allocate it."""
    return _serialize(
        helper.make_graph(
            [helper.make_node("Identity", ["X"], ["Y"])],
            "huge_input",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [side, side])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [side, side])],
        )
    )
