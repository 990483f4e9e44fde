"""Checks a model's plaintext must pass before it is sealed, registered or loaded.

Pure functions over bytes, shared by the SDK (before sealing), the protected core (before
registering) and the worker (before building a session), so that each layer refuses a hostile
model on its own. The main hazard is ONNX *external data*: an initializer whose bytes live in a
file named by a relative path, which ONNX Runtime resolves against the worker's working directory
(issue 10.1: a model could return ``.qward/keystore.key`` as its output). qward models carry all
their weights inline, so any external reference is refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from qward.errors import InputError
from qward.runtime.circuit_spec import CIRCUIT_CONTENT_TYPE, is_circuit_spec, parse_circuit_spec
from qward.runtime.llm_profile import GGUF_CONTENT_TYPE, check_gguf_header, is_gguf

__all__ = ["check_model_bytes", "check_onnx_model", "external_data_tensors"]

# Subgraphs nest (If, Loop, Scan); a model nested deeper than this is refused, not recursed into.
_MAX_DEPTH = 64


def _graph_tensors(graph: onnx.GraphProto, depth: int) -> Iterator[onnx.TensorProto]:
    if depth > _MAX_DEPTH:
        raise InputError(f"the model nests subgraphs more than {_MAX_DEPTH} deep")
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute, depth)


def _attribute_tensors(attribute: onnx.AttributeProto, depth: int) -> Iterator[onnx.TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    if attribute.HasField("sparse_tensor"):
        yield attribute.sparse_tensor.values
        yield attribute.sparse_tensor.indices
    for sparse in attribute.sparse_tensors:
        yield sparse.values
        yield sparse.indices
    if attribute.HasField("g"):
        yield from _graph_tensors(attribute.g, depth + 1)
    for sub in attribute.graphs:
        yield from _graph_tensors(sub, depth + 1)


def _model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph, 0)
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                yield from _attribute_tensors(attribute, 1)


def external_data_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of every tensor in ``model`` (graph, subgraphs, attributes, sparse initializers,
    functions) whose data is stored outside the model."""
    return [
        t.name or "<unnamed>"
        for t in _model_tensors(model)
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0
    ]


def check_onnx_model(data: bytes) -> onnx.ModelProto:
    """Parse ``data`` as an ONNX model that holds all its data inline; ``InputError`` otherwise."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # protobuf's DecodeError and friends carry no useful detail
        raise InputError("the model is not an ONNX model (it does not parse)") from None
    if not model.HasField("graph") or not model.opset_import:
        raise InputError("the model is not an ONNX model (no graph or no opset)")
    external = external_data_tensors(model)
    if external:
        raise InputError(
            "the model uses external data, which qward refuses: "
            f"tensors {', '.join(sorted(external)[:5])}"
        )
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as exc:  # onnx.checker.ValidationError and friends
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise InputError(f"the ONNX model does not pass onnx.checker: {first}") from None
    return model


def check_model_bytes(data: bytes) -> str:
    """Check a model's plaintext and return its content type: a valid ``qward/circuit/v1`` spec,
    a GGUF language model whose header parses, or an ONNX model that passes
    ``check_onnx_model``."""
    if is_gguf(data):
        check_gguf_header(data)
        return GGUF_CONTENT_TYPE
    if is_circuit_spec(data):
        parse_circuit_spec(data)
        return CIRCUIT_CONTENT_TYPE
    check_onnx_model(data)
    return "application/onnx"
