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
import zlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from qward import __version__
from qward.core_api import CoreInterface
from qward.encoding import read_limited
from qward.errors import InputError, NotFoundError
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_input
from qward.sdk.core_client import AsyncCoreClient
from qward.tensors import DATATYPES, Tensor, tensors_from_json

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_SEALED_MODEL_BYTES",
    "SEALED_MODEL_FILE",
    "ModelRepository",
    "v2_router",
]

MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_SEALED_MODEL_BYTES = 1024 * 1024 * 1024 + 65536
_HEADER_LENGTH = "inference-header-content-length"
_RESERVED_PARAMETERS = {"binary_data_output", "seed", "qward_caller"}


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InputError(f"Content-Encoding {encoding!r} is not supported (use gzip)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, MAX_REQUEST_BYTES + 1)
    except zlib.error:
        raise InputError(f"request body is not valid {encoding}") from None
    if len(out) > MAX_REQUEST_BYTES or inflater.unconsumed_tail:
        raise InputError(f"decompressed request is over the {MAX_REQUEST_BYTES} byte limit")
    return out


def _split_binary(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        head, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InputError("Inference-Header-Content-Length does not fit the body")
        head, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, ValueError):
        raise InputError("inference request header is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InputError('inference request needs an "inputs" list')
    return doc, binary


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
    """Sealed models at ``<dir>/<name>/model.sealed``; no plaintext model lives here."""

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise InputError(f"model repository {directory} is not a directory")
        self.directory = directory

    def names(self) -> list[str]:
        """Names of the models present in the repository."""
        return sorted(
            p.parent.name
            for p in self.directory.glob(f"*/{SEALED_MODEL_FILE}")
            if _MODEL_NAME.match(p.parent.name)
        )

    def sealed(self, name: str) -> bytes:
        """The sealed model for ``name``, read through the size limit."""
        if not _MODEL_NAME.match(name):
            raise InputError(f"{name!r} is not a valid model name")
        path = self.directory / name / SEALED_MODEL_FILE
        if not path.is_file():
            raise NotFoundError(f"model {name!r} is not in the repository")
        return read_limited(str(path), limit=MAX_SEALED_MODEL_BYTES, what=f"model {name}")

    def load_all(self, core: CoreInterface) -> list[str]:
        """Register every model in the repository with the core."""
        for name in self.names():
            core.register_model(self.sealed(name), name=name)
        return self.names()


def v2_router(
    core: CoreInterface,
    trust: TrustBundle,
    repository: ModelRepository | None = None,
    *,
    runner: AsyncCoreClient,
) -> APIRouter:
    """The V2 routes over ``core``; models are addressed by the name they were registered under.

    Inferences go through ``runner``, which awaits the core without a thread per request.
    """
    router = APIRouter(prefix="/v2", tags=["open-inference-protocol-v2"])

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
        return [{"name": n, "version": "1", "state": s} for n, s in sorted(states.items())]

    @router.post("/repository/models/{name}/load")
    def repository_load(name: str) -> dict[str, Any]:
        """(Re)load a model from the repository: its sealed file goes to the core."""
        if repository is None:
            raise NotFoundError("this server has no model repository")
        info = core.register_model(repository.sealed(name), name=name)
        return {"name": name, "model_sha256": info.model_sha256}

    @router.post("/repository/models/{name}/unload")
    def repository_unload(name: str) -> dict[str, Any]:
        """Stop the model's worker; inference is refused until it is loaded again."""
        core.unload_model(model(name)["model_sha256"])
        return {"name": name}

    @router.post("/models/{name}/infer")
    @router.post("/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = "1") -> Response:
        """Attested inference; the receipt comes back in the response parameters."""
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_REQUEST_BYTES:
                raise InputError(f"request body is over the {MAX_REQUEST_BYTES} byte limit")
        body = _decompress(raw, request.headers.get("content-encoding", "").lower())
        doc, binary = _split_binary(body, request.headers.get(_HEADER_LENGTH))
        inputs = _binary_inputs(doc, binary)
        params = dict(doc.get("parameters") or {})
        seed = params.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError("parameters.seed must be an integer")
        extra = {k: v for k, v in params.items() if k not in _RESERVED_PARAMETERS}
        caller = getattr(request.state, "qward_caller", None)
        if caller is not None:
            extra["qward_caller"] = caller
        sealed = seal_input(inputs, trust=trust)
        # The core resolves the name in the same call: one round trip, no stale lookup.
        result = await runner.run(name, sealed, seed=seed, parameters=extra, by_name=True)
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
