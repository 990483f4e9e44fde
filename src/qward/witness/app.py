"""The witness's HTTP service: c2sp.org/tlog-witness ``add-checkpoint`` and its public keys.

Handlers are thin: read the body through a size limit, one call to ``Witness.add_checkpoint``,
and the status the spec assigns to each refusal. Errors are short text naming what was wrong.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from qward.errors import FormatError, InputError
from qward.tlog.witness import MAX_BODY, SIZE_CONTENT_TYPE, Witness, WitnessRefusedError

__all__ = ["create_witness_app"]


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise FormatError("add-checkpoint: request body is over the size limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise FormatError("add-checkpoint: request body is over the size limit")
    return bytes(body)


def create_witness_app(witness: Witness) -> FastAPI:
    """The witness service over ``witness`` (its state and keys)."""
    app = FastAPI(title="qward witness", docs_url=None, redoc_url=None)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        try:
            # Verifying signatures and the fsync of the state run off the event loop.
            lines = await run_in_threadpool(witness.add_checkpoint, await _body(request))
        except WitnessRefusedError as refusal:
            if refusal.size is not None:
                return Response(f"{refusal.size}\n", 409, media_type=SIZE_CONTENT_TYPE)
            return PlainTextResponse(f"{refusal}\n", refusal.status)
        except InputError as exc:
            return PlainTextResponse(f"{exc}\n", 400)
        return Response(lines, 200, media_type="text/plain; charset=utf-8")

    @app.get("/witness")
    async def keys() -> PlainTextResponse:
        return PlainTextResponse("".join(f"{v.to_vkey()}\n" for v in witness.verifiers))

    return app
