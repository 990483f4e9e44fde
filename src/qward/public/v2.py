"""KServe V2 / Open Inference Protocol REST endpoints, in front of the protected core.

Stock V2 clients send plaintext tensors; this public process seals them to the core's HPKE key at
once, so only sealed inputs travel to the core, and it never sees a model at all. Every inference
is an attested run: the response ``parameters`` carry the receipt id, the log index and the
receipt itself. Supports JSON tensors, the binary tensor extension
(``Inference-Header-Content-Length``) and gzip request bodies.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from qward import __version__
from qward.core_api import AccessRecord, CoreInterface, RunResult
from qward.encoding import read_limited
from qward.errors import InputError, NotFoundError, QwardError, UnknownKeyError
from qward.public.folded_access import claim_access
from qward.public.trust_source import TrustSource
from qward.sdk.client import seal_input
from qward.sdk.core_client import AsyncCoreClient
from qward.tensors import DATATYPES, Tensor, tensors_from_json

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_PARAMETERS_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_SEALED_MODEL_BYTES",
    "SEALED_MODEL_FILE",
    "SMALL_REQUEST_BYTES",
    "ModelRepository",
    "v2_router",
]

MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_SEALED_MODEL_BYTES = 1024 * 1024 * 1024 + 65536
_HEADER_LENGTH = "inference-header-content-length"
_RESERVED_PARAMETERS = {"binary_data_output", "seed", "qward_caller"}
# The request header travels to the core in one frame whose header is bounded: parameters are
# checked here, so that an oversized value is the client's 400, not a failed core call.
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
# JSON costs several times its size to parse (bytes, str, objects); large tensors belong in the
# binary section, which is limited by MAX_REQUEST_BYTES only.
MAX_JSON_BYTES = 16 * 1024 * 1024
# A request that says it is at most this long, uncompressed, is small: it is parsed on the event
# loop (a hop to a thread costs more than the parse) and needs no large-request slot.
SMALL_REQUEST_BYTES = 256 * 1024
_MAX_DIMENSION = 2**31 - 1


def _decompress(body: bytes, encoding: str, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """Inflate ``body`` to at most ``limit`` bytes: zlib stops at the limit (``max_length``), so
    a small bomb costs ``limit`` bytes of memory, never what it would inflate to."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InputError(f"Content-Encoding {encoding!r} is not supported (use gzip)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InputError(f"request body is not valid {encoding}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise InputError(f"decompressed request is over the {limit} byte limit")
    return out


def _split_binary(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        head, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InputError("Inference-Header-Content-Length does not fit the body")
        head, binary = body[: int(header_length)], body[int(header_length) :]
    if len(head) > MAX_JSON_BYTES:
        raise InputError(
            f"inference request JSON is {len(head)} bytes, over the {MAX_JSON_BYTES} byte limit"
        )
    try:
        doc = json.loads(head)
    except RecursionError:
        raise InputError(f"inference request is nested deeper than {MAX_JSON_DEPTH}") from None
    except (UnicodeDecodeError, ValueError):
        raise InputError("inference request header is not valid JSON") from None
    _check_depth(doc)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InputError('inference request needs an "inputs" list')
    for item in doc["inputs"]:
        _check_input(item)
    _check_parameters(doc.get("parameters"))
    return doc, binary


def _check_depth(doc: Any) -> None:
    """Refuse documents nested deeper than ``MAX_JSON_DEPTH`` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InputError(f"inference request is nested deeper than {MAX_JSON_DEPTH}")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list) and value and isinstance(value[0], list | dict):
            stack.extend((v, depth + 1) for v in value)


def _check_input(item: Any) -> None:
    if not isinstance(item, dict):
        raise InputError("each inference input must be an object")
    name, shape = item.get("name"), item.get("shape")
    if not isinstance(name, str):
        raise InputError('each inference input needs a string "name"')
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_DIMENSION for d in shape
    ):
        raise InputError(
            f'input {name!r}: "shape" must be a list of integers from 0 to {_MAX_DIMENSION}'
        )
    _check_parameters(item.get("parameters"), where=f"input {name!r}")


def _check_parameters(params: Any, *, where: str = "request") -> None:
    if params is None:
        return
    if not isinstance(params, dict):
        raise InputError(f'{where}: "parameters" must be an object')
    size = len(json.dumps(params, separators=(",", ":")))
    if size > MAX_PARAMETERS_BYTES:
        raise InputError(
            f'{where}: "parameters" is {size} bytes, over the {MAX_PARAMETERS_BYTES} byte limit'
        )


def _binary_inputs(doc: dict[str, Any], binary: bytes) -> tuple[Tensor, ...]:
    """Inputs whose data came in the binary section; the rest are parsed as JSON."""
    tensors, json_inputs, offset = [], [], 0
    for item in doc["inputs"]:
        size = (
            (item.get("parameters") or {}).get("binary_data_size")
            if isinstance(item, dict)
            else None
        )
        if size is None:
            json_inputs.append(item)
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InputError(f"input {item.get('name')!r}: binary_data_size does not fit the body")
        if item.get("datatype") not in DATATYPES or not isinstance(item.get("shape"), list):
            raise InputError(f"input {item.get('name')!r}: unsupported datatype or bad shape")
        tensors.append(
            Tensor(
                name=str(item.get("name")),
                datatype=item["datatype"],
                shape=tuple(item["shape"]),
                data=binary[offset : offset + size],
            )
        )
        offset += size
    if offset != len(binary):
        raise InputError("binary section is longer than the inputs it describes")
    if json_inputs:
        parsed, _ = tensors_from_json(json.dumps({"inputs": json_inputs}).encode())
        tensors.extend(parsed)
    return tuple(tensors)


def _parse_request(
    raw: bytes, encoding: str, header_length: str | None
) -> tuple[dict[str, Any], tuple[Tensor, ...]]:
    # A request without a binary section is all JSON: its JSON limit is its inflation limit.
    limit = MAX_REQUEST_BYTES if header_length is not None else MAX_JSON_BYTES
    doc, binary = _split_binary(_decompress(raw, encoding, limit), header_length)
    return doc, _binary_inputs(doc, binary)


async def _run_attested(
    runner: AsyncCoreClient,
    source: TrustSource,
    model: str,
    inputs: tuple[Tensor, ...],
    *,
    seed: int,
    parameters: dict[str, Any],
    access: AccessRecord | None = None,
) -> RunResult:
    """Seal, run, and check the receipt before it may be returned (issues 11.5 and 11.11).

    ``access`` goes with the first attempt only: the core logs it whether or not the run works.
    """
    trust = source.current_nowait()
    if trust is None:
        trust = await anyio.to_thread.run_sync(source.current)
    try:
        # The core resolves the name in the same call: one round trip, no stale lookup.
        result = await runner.run(
            model,
            seal_input(inputs, trust=trust),
            seed=seed,
            parameters=parameters,
            by_name=True,
            access=access,
        )
    except UnknownKeyError:
        # The core rotated its sealing key since we last looked: fetch its keys and retry once.
        trust = await anyio.to_thread.run_sync(lambda: source.current(force=True))
        result = await runner.run(
            model, seal_input(inputs, trust=trust), seed=seed, parameters=parameters, by_name=True
        )
    # On the event loop: the checkpoint's signatures are checked once per batch (the verifier
    # keeps them), so what is left is an inclusion proof, cheaper than a hop to a thread.
    source.check_receipt(result.receipt, trust)
    return result


async def _take_slot(slots: anyio.Semaphore, timeout: float) -> bool:
    """Take a slot, waiting at most ``timeout`` seconds; False when none came free."""
    try:
        slots.acquire_nowait()
        return True
    except anyio.WouldBlock:
        pass
    with anyio.move_on_after(timeout):
        await slots.acquire()
        return True
    return False


def _is_small(request: Request) -> bool:
    """Whether the request declares a body of at most ``SMALL_REQUEST_BYTES``, uncompressed
    (the declared length is enforced while the body is read)."""
    length = request.headers.get("content-length", "")
    encoding = request.headers.get("content-encoding", "identity").lower()
    return encoding == "identity" and length.isdigit() and int(length) <= SMALL_REQUEST_BYTES


def _busy(what: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"server busy: {what}; retry"}, status_code=503, headers={"Retry-After": "1"}
    )


def _wants_binary(doc: dict[str, Any], name: str) -> bool:
    for requested in doc.get("outputs") or []:
        if isinstance(requested, dict) and requested.get("name") == name:
            return bool((requested.get("parameters") or {}).get("binary_data", False))
    return bool((doc.get("parameters") or {}).get("binary_data_output", False))


def _encode_response(
    doc: dict[str, Any], body: dict[str, Any], outputs: tuple[Tensor, ...]
) -> Response:
    requested = [o.get("name") for o in doc.get("outputs") or [] if isinstance(o, dict)]
    chunks = []
    body["outputs"] = []
    for tensor in outputs:
        if requested and tensor.name not in requested:
            continue
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if _wants_binary(doc, tensor.name):
            entry["parameters"] = {"binary_data_size": len(tensor.data)}
            chunks.append(tensor.data)
        else:
            entry["data"] = tensor.to_numpy().reshape(-1).tolist()
        body["outputs"].append(entry)
    header = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SEALED_MODEL_FILE = "model.sealed"


class ModelRepository:
    """Sealed models at ``<dir>/<name>/model.sealed``; no plaintext model lives here.

    A model that cannot be loaded (corrupt, too large, a symlink, a bad name) does not stop the
    others: it is reported on stderr by path and kept in ``failures`` with the reason.
    """

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise InputError(f"model repository {directory} is not a directory")
        self.directory = directory
        self.failures: dict[str, str] = {}

    def names(self) -> list[str]:
        """Names of the loadable-looking models present in the repository (no symlinks)."""
        return sorted(
            p.parent.name
            for p in self.directory.glob(f"*/{SEALED_MODEL_FILE}")
            if _MODEL_NAME.match(p.parent.name) and not _symlinked(p)
        )

    def sealed(self, name: str) -> bytes:
        """The sealed model for ``name``, read through the size limit; symlinks are refused."""
        if not _MODEL_NAME.match(name):
            raise InputError(f"{name!r} is not a valid model name")
        path = self.directory / name / SEALED_MODEL_FILE
        if _symlinked(path):
            raise InputError(f"{path} is a symlink; the model repository does not follow links")
        if not path.is_file():
            raise NotFoundError(f"model {name!r} is not in the repository")
        return read_limited(str(path), limit=MAX_SEALED_MODEL_BYTES, what=f"model {name}")

    def load_all(self, core: CoreInterface) -> list[str]:
        """Register every model in the repository with the core; returns the ones loaded."""
        self.failures = {}
        loaded = []
        for path in sorted(self.directory.glob(f"*/{SEALED_MODEL_FILE}")):
            name = path.parent.name
            try:
                core.register_model(self.sealed(name), name=name)
                loaded.append(name)
            except QwardError as exc:
                self.failures[name] = f"{path}: {exc}"
                print(f"qward: model {name!r} not loaded: {path}: {exc}", file=sys.stderr)
        return loaded


def _symlinked(path: Path) -> bool:
    return path.is_symlink() or path.parent.is_symlink()


def v2_router(
    core: CoreInterface,
    trust: TrustSource,
    repository: ModelRepository | None = None,
    *,
    runner: AsyncCoreClient,
    max_concurrent: int = 16,
    max_large: int = 4,
    queue_timeout: float = 2.0,
) -> APIRouter:
    """The V2 routes over ``core``; models are addressed by the name they were registered under.

    Inferences go through ``runner``, which awaits the core without a thread per request. At most
    ``max_concurrent`` run at once, and of those at most ``max_large`` whose body may be large
    (over ``SMALL_REQUEST_BYTES``, compressed, or of unknown length); the rest wait up to
    ``queue_timeout`` seconds before their body is read, then are answered 503 with
    ``Retry-After``, so a flood cannot pile up memory.
    """
    router = APIRouter(prefix="/v2", tags=["open-inference-protocol-v2"])
    slots = anyio.Semaphore(max_concurrent)
    large_slots = anyio.Semaphore(max(1, min(max_large, max_concurrent)))

    def model(name: str) -> dict[str, Any]:
        for entry in core.models():
            if entry["name"] == name:
                return entry
        raise NotFoundError(f"model {name!r} is not registered")

    @router.get("/health/live")
    def live() -> dict[str, bool]:
        """Liveness of the public server."""
        return {"live": True}

    @router.get("/health/ready")
    def ready() -> dict[str, bool]:
        """Ready when the protected core answers."""
        core.checkpoint()
        return {"ready": True}

    @router.get("")
    def server_metadata() -> dict[str, Any]:
        """Server metadata."""
        return {
            "name": "qward",
            "version": __version__,
            "extensions": ["binary_tensor_data", "model_repository"],
        }

    @router.get("/models/{name}")
    @router.get("/models/{name}/versions/{version}")
    def model_metadata(name: str, version: str = "1") -> dict[str, Any]:
        """Model metadata: inputs and outputs as the sandboxed worker reports them."""
        entry = model(name)
        return {
            "name": name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": entry["inputs"],
            "outputs": entry["outputs"],
            "parameters": {"qward_model_sha256": entry["model_sha256"]},
        }

    @router.get("/models/{name}/ready")
    @router.get("/models/{name}/versions/{version}/ready")
    def model_ready(name: str, version: str = "1") -> JSONResponse:
        """200 when the model's worker is up, 400 otherwise."""
        is_ready = bool(model(name)["ready"])
        return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 400)

    @router.post("/repository/index")
    def repository_index() -> list[dict[str, Any]]:
        """Every model in the repository or registered with the core, and its state."""
        states = {m["name"]: "READY" if m["ready"] else "UNAVAILABLE" for m in core.models()}
        for name in repository.names() if repository else []:
            states.setdefault(name, "UNAVAILABLE")
        failures = repository.failures if repository else {}
        index: list[dict[str, Any]] = []
        for name, state in sorted({**dict.fromkeys(failures, "UNAVAILABLE"), **states}.items()):
            entry: dict[str, Any] = {"name": name, "version": "1", "state": state}
            if name in failures and state != "READY":
                entry["reason"] = failures[name]
            index.append(entry)
        return index

    @router.post("/repository/models/{name}/load")
    def repository_load(name: str) -> dict[str, Any]:
        """(Re)load a model: from the repository if it is there, else the core's sealed copy."""
        if repository is not None and name in repository.names():
            info = core.register_model(repository.sealed(name), name=name)
            return {"name": name, "model_sha256": info.model_sha256}
        # A model registered by upload or the SDK: the core kept it sealed; undo its unload.
        digest = model(name)["model_sha256"]
        core.unload_model(digest, reload=True)
        return {"name": name, "model_sha256": digest}

    @router.post("/repository/models/{name}/unload")
    def repository_unload(name: str) -> dict[str, Any]:
        """Stop the model's worker; inference is refused until it is loaded again."""
        core.unload_model(model(name)["model_sha256"])
        return {"name": name}

    @router.post("/models/{name}/infer")
    @router.post("/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = "1") -> Response:
        """Attested inference; the receipt comes back in the response parameters."""
        # A request waits a little for a slot (before its body is read, so waiting is cheap),
        # then is told to come back: a burst is smoothed, a flood is refused.
        small = _is_small(request)
        deadline = anyio.current_time() + queue_timeout
        if not await _take_slot(slots, queue_timeout):
            return _busy(f"{max_concurrent} inferences are running")
        try:
            if small:
                return await _infer(request, name, small=True)
            if not await _take_slot(large_slots, max(0.0, deadline - anyio.current_time())):
                return _busy(f"{max_large} large inferences are running")
            try:
                return await _infer(request, name, small=False)
            finally:
                large_slots.release()
        finally:
            slots.release()

    async def _infer(request: Request, name: str, *, small: bool) -> Response:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_REQUEST_BYTES:
                raise InputError(f"request body is over the {MAX_REQUEST_BYTES} byte limit")
            chunks.append(chunk)
        encoding = request.headers.get("content-encoding", "").lower()
        header_length = request.headers.get(_HEADER_LENGTH)
        if small and size <= SMALL_REQUEST_BYTES:
            doc, inputs = _parse_request(b"".join(chunks), encoding, header_length)
        else:
            # Inflating and parsing large bodies is CPU-bound: a worker thread keeps the event
            # loop answering.
            doc, inputs = await anyio.to_thread.run_sync(
                _parse_request, b"".join(chunks), encoding, header_length
            )
        params = dict(doc.get("parameters") or {})
        seed = params.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError("parameters.seed must be an integer")
        extra = {k: v for k, v in params.items() if k not in _RESERVED_PARAMETERS}
        caller = getattr(request.state, "qward_caller", None)
        if caller is not None:
            extra["qward_caller"] = caller
        result = await _run_attested(
            runner,
            trust,
            name,
            inputs,
            seed=seed,
            parameters=extra,
            access=claim_access(request),
        )
        reply: dict[str, Any] = {
            "model_name": name,
            "model_version": "1",
            "parameters": {
                "qward_receipt_id": result.receipt_id,
                "qward_log_index": result.log_index,
                "qward_receipt": result.receipt.decode("utf-8"),
            },
        }
        if isinstance(doc.get("id"), str):
            reply["id"] = doc["id"]
        return _encode_response(doc, reply, result.outputs)

    return router
