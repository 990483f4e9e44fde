"""The public HTTP API. It holds no key and never sees a plaintext model or input.

Handlers are thin: decode, one call to the core through ``CoreClient``, encode. Clients seal
models and inputs with the core's public key (``GET /v1/trust``) before sending them. A
``QwardError`` maps to an HTTP status in one exception handler; anything else is a bare 500 with
no internals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from qward import __version__
from qward.encoding import b64encode, parse_canonical_json
from qward.errors import (
    AuditError,
    CoreUnavailableError,
    CryptoError,
    InputError,
    NotFoundError,
    QwardError,
    RuntimeFailure,
    UnknownKeyError,
    VerificationError,
)
from qward.public.access import AccessControl, AccessPolicy
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.public.console import console_router
from qward.public.folded_access import claim_access
from qward.public.observability import Metrics, MetricsMiddleware, health_router
from qward.public.openai_api import ModelForbiddenError, openai_router
from qward.public.ratelimit import RateLimiter
from qward.public.refusals import RefusalAggregator
from qward.public.trust_source import TrustSource
from qward.public.v2 import ModelRepository, v2_router
from qward.sdk.core_client import AsyncCoreClient, CoreClient
from qward.sdk.core_process import socket_path
from qward.tensors import tensors_to_json

__all__ = ["AttestationRequest", "create_app"]

_MAX_BODY = 1024 * 1024 * 1024
_STATUS: list[tuple[type[QwardError], int]] = [
    (NotFoundError, 404),
    (ModelForbiddenError, 403),
    (UnknownKeyError, 422),
    (CryptoError, 422),
    (VerificationError, 422),
    (InputError, 400),
    (AuditError, 503),
    (CoreUnavailableError, 503),
    (RuntimeFailure, 502),
]


async def _body(request: Request, limit: int = _MAX_BODY) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"request body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _plain_error(
    request: Request, status: int, message: str, headers: dict[str, str] | None
) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
    if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
        return JSONResponse({"error": f"{code}: {message}"}, status_code=status, headers=headers)
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


class AttestationRequest(BaseModel):
    """``POST /v1/attestation``: a fresh client nonce, 16 to 64 bytes in hex."""

    model_config = ConfigDict(extra="forbid")
    nonce: Annotated[str, Field(min_length=32, max_length=128, pattern="^([0-9a-f]{2})+$")]


def create_app(
    state_dir: Path,
    *,
    model_repository: Path | None = None,
    allow_model_upload: bool = False,
    unsafe_no_auth: bool = False,
    metrics_requires_token: bool = True,
    docs: bool = False,
    log_requires_token: bool = False,
    max_concurrent_inferences: int | None = None,
    max_large_inferences: int | None = None,
    inference_queue_timeout: float = 2.0,
    refusal_interval: float = 10.0,
    max_refusal_sources: int = 1024,
    rate_per_token: float = 1000.0,
    burst_per_token: float = 2000.0,
    rate_per_address: float = 1000.0,
    burst_per_address: float = 2000.0,
) -> FastAPI:
    """The public API in front of the core listening in ``state_dir``.

    Token authentication is on unless ``unsafe_no_auth`` (for tests and local experiments only);
    tokens live in ``<state_dir>/tokens.json``. Sealed models in ``model_repository`` are loaded
    at start; uploads through ``POST /v1/models`` are refused unless ``allow_model_upload``.
    ``/metrics`` needs an auditor or admin token unless ``metrics_requires_token`` is False; the
    API schema (``/docs``, ``/redoc``, ``/openapi.json``) is served only when ``docs``; the public
    log's checkpoint and tiles are open unless ``log_requires_token``. At most
    ``max_concurrent_inferences`` (default: 8 per CPU, at least 16) V2 inferences run at once, and
    of those at most ``max_large_inferences`` (default: 2 per CPU) whose body may be over 256 KiB;
    more wait up to ``inference_queue_timeout`` seconds, then are answered 503 with
    ``Retry-After``.
    Refused calls are logged per source at most once per ``refusal_interval`` seconds plus one
    aggregate record (``max_refusal_sources`` tracked).
    Each token and each client address may make ``rate_per_*`` calls per second with bursts of
    ``burst_per_*``; beyond that the answer is 429 with ``Retry-After``.
    """
    app = FastAPI(
        title="qward",
        version=__version__,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    policy = AccessPolicy(
        metrics_requires_token=metrics_requires_token,
        docs=docs,
        log_requires_token=log_requires_token,
    )
    core = CoreClient(socket_path(state_dir))
    # The per-request calls (access records, inferences) await the core on the event loop.
    hot = AsyncCoreClient(socket_path(state_dir))
    metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if not unsafe_no_auth:
        app.add_middleware(
            AccessControl,
            tokens=TokenStore(state_dir / TOKEN_FILE),
            core=core,
            recorder=hot,
            allow_model_upload=allow_model_upload,
            policy=policy,
            refusals=RefusalAggregator(
                hot, interval=refusal_interval, max_sources=max_refusal_sources
            ),
            per_token=RateLimiter(rate=rate_per_token, burst=burst_per_token),
            per_address=RateLimiter(rate=rate_per_address, burst=burst_per_address),
        )
    app.include_router(health_router(core, metrics))
    trust_source = TrustSource(core)
    cpus = os.cpu_count() or 1
    repository = ModelRepository(model_repository) if model_repository else None
    if repository is not None:
        repository.load_all(core)
    app.include_router(
        v2_router(
            core,
            trust_source,
            repository,
            runner=hot,
            max_concurrent=max_concurrent_inferences or max(16, 8 * cpus),
            max_large=max_large_inferences or 2 * cpus,
            queue_timeout=inference_queue_timeout,
        )
    )

    app.include_router(openai_router(core, trust_source, runner=hot))
    app.include_router(console_router(core, trust_source))

    @app.exception_handler(QwardError)
    async def _qward_error(request: Request, exc: QwardError) -> JSONResponse:
        status = next((s for cls, s in _STATUS if isinstance(exc, cls)), 500)
        if request.url.path.startswith("/v2"):
            # The V2 protocol's error body is {"error": "<message>"}; stock clients parse it so.
            return JSONResponse({"error": f"{exc.code}: {exc}"}, status_code=status)
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown routes and wrong methods: the V2 body is a string, /v1 keeps code + message.
        return _plain_error(
            request, exc.status_code, str(exc.detail), dict(exc.headers or {}) or None
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:5]
        )
        return _plain_error(request, 400, f"invalid request ({where})", None)

    @app.get("/v1/trust")
    def trust() -> Response:
        """The core's public keys: seal to ``hpke_recipient``, verify with the rest."""
        return Response(trust_source.current().to_bytes(), media_type="application/json")

    @app.post("/v1/attestation")
    async def attestation(request: AttestationRequest) -> Response:
        """Fresh evidence binding the trust bundle and the client's nonce (logged by the core);
        appraise it before pinning the keys (``qward trust fetch``)."""
        answer = await run_in_threadpool(core.attest, bytes.fromhex(request.nonce))
        return Response(answer, media_type="application/json")

    @app.post("/v1/models")
    async def register(request: Request, name: Annotated[str, Query(max_length=200)]) -> Any:
        """Register a sealed model (body: the sealed artifact)."""
        info = await run_in_threadpool(core.register_model, await _body(request), name=name)
        return {
            "model_sha256": info.model_sha256,
            "name": info.name,
            "inputs": info.inputs,
            "outputs": info.outputs,
            "isolation": info.isolation,
        }

    @app.post("/v1/models/{model_sha256}/infer")
    async def infer(
        request: Request, model_sha256: str, seed: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0
    ) -> Any:
        """Run a model on a sealed input (body); returns outputs and the logged receipt."""
        sealed = await _body(request, 64 * 1024 * 1024)
        caller = getattr(request.state, "qward_caller", None)
        parameters = {"qward_caller": caller} if caller else {}
        result = await hot.run(
            model_sha256, sealed, seed=seed, parameters=parameters, access=claim_access(request)
        )
        # Never a 200 with a receipt that would fail `qward verify` (e.g. no witness quorum).
        await run_in_threadpool(
            lambda: trust_source.check_receipt(result.receipt, trust_source.current())
        )
        return {
            "outputs": tensors_to_json(result.outputs),
            "parameters": {"receipt_id": result.receipt_id, "log_index": result.log_index},
            "receipt": parse_canonical_json(result.receipt, what="receipt"),
        }

    @app.get("/v1/log/checkpoint")
    def checkpoint() -> Response:
        """The latest signed checkpoint (C2SP signed note)."""
        return Response(core.checkpoint(), media_type="text/plain; charset=utf-8")

    @app.get("/log/checkpoint")
    def tlog_checkpoint() -> Response:
        """C2SP tlog-tiles checkpoint (mutable: not cached)."""
        return Response(
            core.checkpoint(),
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": "no-cache, max-age=1"},
        )

    @app.get("/log/tile/{path:path}")
    def tlog_tile(path: str) -> Response:
        """C2SP tlog-tiles hash tiles and entry bundles (immutable)."""
        return Response(
            core.tile(f"tile/{path}"),
            media_type="application/octet-stream",
            headers={"Cache-Control": "public, max-age=604800, immutable"},
        )

    @app.get("/v1/log/proof/inclusion")
    def inclusion(index: Annotated[int, Query(ge=0)], size: Annotated[int, Query(ge=1)]) -> Any:
        """RFC 9162 inclusion proof."""
        return {
            "index": index,
            "size": size,
            "proof": [b64encode(h) for h in core.inclusion_proof(index, size)],
        }

    @app.get("/v1/log/proof/consistency")
    def consistency(old: Annotated[int, Query(ge=1)], new: Annotated[int, Query(ge=1)]) -> Any:
        """RFC 9162 consistency proof."""
        return {
            "old": old,
            "new": new,
            "proof": [b64encode(h) for h in core.consistency_proof(old, new)],
        }

    return app
