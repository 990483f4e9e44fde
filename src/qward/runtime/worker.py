"""The sandboxed worker process: ``python -m qward.runtime.worker``.

It reads frames on stdin and answers on stdout (``qward.framing``). The first frame carries the
plaintext model; the worker checks its digest, sandboxes itself, builds the deterministic ONNX
Runtime session, warms it up, installs the seccomp allowlist, probes its own sandbox, and reports.
Then it answers ``run`` frames until stdin closes. It never receives a key. Errors go back as
``{"ok": false, "code", "message"}`` frames; tracebacks only to stderr.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import onnx
import onnxruntime as ort

from qward.errors import FormatError, InputError, QwardError, RuntimeFailure
from qward.framing import read_frame, write_frame
from qward.heap import settle_heap
from qward.runtime import isolation, sandbox
from qward.runtime.circuit_spec import CIRCUIT_CONTENT_TYPE, parse_circuit_spec
from qward.runtime.determinism import (
    MAX_SEED,
    build_session_options,
    library_versions,
    platform_class,
    seed_everything,
    session_options_record,
)
from qward.runtime.llm_profile import GGUF_CONTENT_TYPE, check_gguf_header
from qward.runtime.memfd import sealed_memfd
from qward.runtime.model_checks import check_onnx_model
from qward.tensors import DATATYPES, Tensor, decode_tensors, encode_tensors

__all__ = ["main", "read_paths"]

MAX_MODEL_BYTES = 1024 * 1024 * 1024
ONNX_CONTENT_TYPE = "application/onnx"
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


def _describe(args: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": a.name,
            "datatype": _ORT_TYPES.get(a.type, a.type),
            "shape": [d if isinstance(d, int) else -1 for d in (a.shape or [])],
        }
        for a in args
    ]


# Operators that draw from a generator ONNX Runtime seeds when the session is built, so
# ``set_seed`` before a run has no effect on them: such models get a fresh session per request.
_RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)


def _op_types(graph: onnx.GraphProto) -> set[str]:
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs]:
                found |= _op_types(sub)
    return found


def _has_random_ops(model: bytes) -> bool:
    try:
        proto = onnx.load_model_from_string(model)
    except Exception:  # protobuf's DecodeError and friends; ORT reports the model as invalid
        return False
    return bool(_op_types(proto.graph) & _RANDOM_OPS)


def _session(model: bytes) -> Any:
    return ort.InferenceSession(
        model, sess_options=build_session_options(), providers=["CPUExecutionProvider"]
    )


class _Model:
    def __init__(self, model: bytes, *, limits: _Limits) -> None:
        # Refused here too, whatever the core checked: ONNX Runtime would open a relative
        # external-data path itself, before any check of ours could see the file.
        check_onnx_model(model)
        self._limits = limits
        self.fresh_session_per_request = _has_random_ops(model)
        self._bytes = model if self.fresh_session_per_request else b""
        try:
            self.session = _session(model)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad models
            raise InputError(
                f"the model does not load in ONNX Runtime: {type(exc).__name__}"
            ) from None
        self.inputs = _describe(self.session.get_inputs())
        self.outputs = _describe(self.session.get_outputs())
        unsupported = [i["name"] for i in self.inputs if i["datatype"] not in DATATYPES]
        if unsupported:
            raise InputError(f"model inputs of unsupported types: {', '.join(unsupported)}")

    def warm_up(self) -> None:
        shapes = {i["name"]: [d if d >= 0 else 1 for d in i["shape"]] for i in self.inputs}
        # A declared input shape the worker could never hold is refused before anything is
        # allocated for it (the warm-up would otherwise build it).
        for i in self.inputs:
            self._limits.check_size(i["name"], shapes[i["name"]], i["datatype"])
        feed = {
            i["name"]: np.zeros(shapes[i["name"]], dtype=DATATYPES[i["datatype"]])
            for i in self.inputs
        }
        seed_everything(0)
        self.session.run(None, feed)

    def run(self, tensors: tuple[Tensor, ...], seed: int) -> tuple[Tensor, ...]:
        feed = self._check(tensors)
        seed_everything(seed)
        if self.fresh_session_per_request:
            self.session = _session(self._bytes)
        names = [o["name"] for o in self.outputs]
        try:
            values = self.session.run(names, feed)
        except Exception as exc:  # a shape the graph rejects at run time, out of memory, ...
            raise RuntimeFailure(
                f"ONNX Runtime failed on this input: {type(exc).__name__}"
            ) from None
        # Sized from shapes and dtypes before anything is encoded, so an amplifying model
        # cannot make the worker (and then the core) hold a second, encoded copy.
        self._limits.check_outputs(sum(int(np.asarray(v).nbytes) for v in values))
        return tuple(
            Tensor.from_numpy(n, np.asarray(v)) for n, v in zip(names, values, strict=True)
        )

    def _check(self, tensors: tuple[Tensor, ...]) -> dict[str, Any]:
        given = {t.name: t for t in tensors}
        expected = {i["name"]: i for i in self.inputs}
        if set(given) != set(expected):
            raise InputError(f"model expects inputs {sorted(expected)}, got {sorted(given)}")
        for name, spec in expected.items():
            tensor = given[name]
            self._limits.check_input(name, tensor)
            if tensor.datatype != spec["datatype"]:
                raise InputError(
                    f"input {name!r} must be {spec['datatype']}, got {tensor.datatype}"
                )
            shape = spec["shape"]
            if len(tensor.shape) != len(shape) or any(
                d >= 0 and d != g for d, g in zip(shape, tensor.shape, strict=True)
            ):
                raise InputError(
                    f"input {name!r} must have shape {shape} (-1 = any), got {list(tensor.shape)}"
                )
        return {name: t.to_numpy() for name, t in given.items()}


def read_paths() -> list[str]:
    """What the worker may read under Landlock: the interpreter, its libraries and qward."""
    paths = {
        sys.prefix,
        sys.base_prefix,
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        os.path.dirname(ort.__file__),
        os.path.dirname(np.__file__),
        # This package's directory, read-only: a circuit worker imports qward.runtime.circuits
        # (and PennyLane) only after Landlock is in force, and an editable install keeps qward
        # outside site-packages. PennyLane needs nothing more (checked with strace): Landlock
        # refuses its import libssl, /etc/passwd (home directory for its config file) and CPU
        # topology files, and it carries on without them; and nothing is added to the seccomp
        # allowlist, since whatever it loads or sets up lazily, the warm-up run does first.
        os.path.dirname(os.path.abspath(__file__)),
    }
    return sorted(p for p in paths if p and os.path.isdir(p))


QUANTUM_EXTRA_MISSING = "this model needs the quantum extra: pip install 'qward[quantum]'"
LLM_EXTRA_MISSING = "this model needs llama-cpp-python: pip install 'llama-cpp-python==0.3.*'"


def _gguf_opener() -> Any:
    # Imported only by GGUF workers, and BEFORE the sandbox: llama_cpp's package import pulls in
    # diskcache and sqlite3, whose system library Landlock would (rightly) hide. Importing is our
    # own code; the model's bytes reach llama.cpp only after every layer is up.
    try:
        from qward.runtime.llm_worker import open_gguf
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in ("llama_cpp", "jinja2"):
            raise InputError(LLM_EXTRA_MISSING) from None
        raise
    return open_gguf


def _chat_template(header: dict[str, Any]) -> str | None:
    template = header.get("chat_template")
    if template is not None and not isinstance(template, str):
        raise InputError("chat_template must be a string")
    return template


def _open_circuit(payload: bytes) -> Any:
    spec = parse_circuit_spec(payload)
    # Imported here so ONNX workers never pay for (or expose) PennyLane.
    try:
        from qward.runtime.circuits import CircuitModel
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in ("pennylane", "pennylane_lightning"):
            raise InputError(QUANTUM_EXTRA_MISSING) from None
        raise
    return CircuitModel(spec)


@dataclass(frozen=True, kw_only=True)
class _Limits:
    memory_limit: int
    max_output_bytes: int

    def check_input(self, name: str, tensor: Tensor) -> None:
        self.check_size(name, list(tensor.shape), tensor.datatype)

    def check_size(self, name: str, shape: list[int], datatype: str) -> None:
        size = math.prod(shape) * np.dtype(DATATYPES[datatype]).itemsize
        if size > self.memory_limit:
            raise InputError(
                f"input {name!r} of shape {shape} needs {size} bytes, over the worker "
                f"memory limit of {self.memory_limit} bytes"
            )

    def check_outputs(self, size: int) -> None:
        if size > self.max_output_bytes:
            raise InputError(
                f"the model's outputs ({size} bytes) are over the limit of "
                f"{self.max_output_bytes} bytes (max_output_bytes)"
            )


def _limits(header: dict[str, Any]) -> _Limits:
    memory_limit = header.get("memory_limit")
    if not isinstance(memory_limit, int) or memory_limit < 256 * 1024 * 1024:
        raise InputError("memory_limit must be at least 256 MiB")
    max_output = header.get("max_output_bytes")
    if not isinstance(max_output, int) or max_output < 1:
        raise InputError("max_output_bytes must be a positive integer")
    return _Limits(memory_limit=memory_limit, max_output_bytes=max_output)


def _paths(header: dict[str, Any], key: str) -> tuple[str, ...]:
    value = header.get(key, [])
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise InputError(f"{key} must be a list of paths")
    return tuple(value)


def _skipped_layers(header: dict[str, Any]) -> frozenset[str]:
    skip = header.get("unsafe_skip_layers", [])
    if not isinstance(skip, list) or not all(isinstance(n, str) for n in skip):
        raise InputError("unsafe_skip_layers must be a list of layer names")
    return frozenset(skip)


def _load(header: dict[str, Any], payload: bytes) -> tuple[Any, dict[str, Any]]:
    if header.get("op") != "load":
        raise FormatError("the first frame must be a load")
    if hashlib.sha256(payload).hexdigest() != header.get("model_sha256"):
        raise InputError("model bytes do not match the announced model_sha256")
    limits = _limits(header)
    content_type = header.get("content_type", ONNX_CONTENT_TYPE)
    if content_type not in (ONNX_CONTENT_TYPE, CIRCUIT_CONTENT_TYPE, GGUF_CONTENT_TYPE):
        raise InputError(f"the worker cannot run models of type {content_type!r}")
    circuit = content_type == CIRCUIT_CONTENT_TYPE
    gguf_fd = -1
    if content_type == GGUF_CONTENT_TYPE:
        # llama.cpp loads from a path: the bytes go into a sealed memfd now, while
        # memfd_create is still allowed (the seccomp denylist below refuses it).
        check_gguf_header(payload)
        open_gguf = _gguf_opener()
        gguf_fd = sealed_memfd(payload)
    hide = _paths(header, "hide_paths")
    report = sandbox.IsolationReport(skip=_skipped_layers(header))
    probe_socket = _paths(header, "probe_unix_socket")
    isolation.enter(
        report,
        hide=hide,
        read_paths=read_paths(),
        memory_limit=limits.memory_limit,
        probe_socket=probe_socket[0] if probe_socket else None,
    )
    model: Any
    if gguf_fd >= 0:
        model = open_gguf(gguf_fd, chat_template=_chat_template(header))
    else:
        model = _open_circuit(payload) if circuit else _Model(payload, limits=limits)
    del payload
    model.warm_up()
    isolation.lock(report)
    if gguf_fd >= 0:
        profile, libraries = model.profile(), {**LIBRARIES, **model.versions()}
    elif circuit:
        profile, libraries = model.profile(), {**LIBRARIES, **model.versions}
    else:
        profile = {
            **session_options_record(),
            "fresh_session_per_request": model.fresh_session_per_request,
        }
        libraries = LIBRARIES
    return model, {
        "ok": True,
        "engine": "llama.cpp" if gguf_fd >= 0 else "pennylane" if circuit else "onnxruntime",
        "isolation": report.to_json(),
        "session_options": profile,
        "libraries": libraries,
        "platform_class": PLATFORM_CLASS,
        "inputs": model.inputs,
        "outputs": model.outputs,
    }


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, QwardError):
        return {"ok": False, "code": exc.code, "message": str(exc)}
    traceback.print_exc(file=sys.stderr)
    return {"ok": False, "code": RuntimeFailure.code, "message": "internal error in the worker"}


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    header, payload = read_frame(stdin, max_payload=MAX_MODEL_BYTES)
    try:
        model, info = _load(header, payload)
    except Exception as exc:
        write_frame(stdout, _error(exc))
        return 2
    del payload
    limits = _limits(header)  # already checked by the load
    settle_heap()
    write_frame(stdout, info)
    while True:
        try:
            header, payload = read_frame(stdin, max_payload=MAX_MODEL_BYTES)
        except EOFError:
            return 0
        try:
            if header.get("op") in ("generate", "replay_generation"):
                _text_frame(stdout, model, header, payload, limits)
                continue
            if header.get("op") != "run" or not hasattr(model, "run"):
                raise FormatError(f"unknown worker operation {header.get('op')!r}")
            seed = header.get("seed")
            if not isinstance(seed, int):
                raise InputError("seed must be an integer")
            result = model.run(decode_tensors(payload), seed)
            if isinstance(model, _Model):
                write_frame(stdout, {"ok": True}, encode_tensors(result))
            else:  # a circuit also reports the compiled circuit its receipt binds
                outputs, record = result
                limits.check_outputs(sum(len(t.data) for t in outputs))
                write_frame(stdout, {"ok": True, "circuit": record}, encode_tensors(outputs))
        except Exception as exc:
            write_frame(stdout, _error(exc))


def _token_frames(stdout: BinaryIO) -> Callable[[Any], None]:
    """Write one interim frame per sampled token (the final frame carries the record)."""

    def send(event: Any) -> None:
        frame = {"ok": True, "event": "token", "index": event.index, "token_id": event.token_id}
        write_frame(stdout, {**frame, "text": event.text})

    return send


def _text_frame(
    stdout: BinaryIO, model: Any, header: dict[str, Any], payload: bytes, limits: _Limits
) -> None:
    if not hasattr(model, "generate"):
        raise FormatError(f"{header.get('op')} needs a GGUF model")
    if header["op"] == "replay_generation":
        body = model.replay(payload)
    else:
        seed = header.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise InputError(f"seed must be an integer from 0 to {MAX_SEED}")
        body = model.generate(
            payload, seed, _token_frames(stdout) if header.get("stream") else None
        )
    limits.check_outputs(len(body))
    write_frame(stdout, {"ok": True}, body)


# Read before the sandbox hides /proc/cpuinfo and the package metadata.
PLATFORM_CLASS = platform_class()
LIBRARIES = library_versions()


def main() -> int:
    """Worker entry point; stdout is reserved for frames."""
    for variable, value in (("ORT_DISABLE_TELEMETRY", "1"), ("OMP_NUM_THREADS", "1")):
        if os.environ.get(variable) != value:
            print(f"qward worker: refusing to start without {variable}={value}", file=sys.stderr)
            return 2
    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the frame stream
    sys.stdout = sys.stderr
    try:
        return _serve(sys.stdin.buffer, frames_out)
    except (EOFError, FormatError) as exc:
        print(f"qward worker: protocol error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
