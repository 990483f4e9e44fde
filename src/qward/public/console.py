"""The audit console: one static page for auditors, and the JSON it reads.

The page itself holds no data and needs no token; it asks for an auditor (or admin) token, keeps
it in ``sessionStorage`` only, and sends it as a bearer token to ``/audit/api/...``, which the
access rules open to auditors and admins alone. The page's script and style are served from here
(no CDN, no inline code), under a Content-Security-Policy that allows nothing else.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from qward.encoding import recanonicalize_json
from qward.errors import InputError, NotFoundError
from qward.public.console_data import MAX_CONSOLE_ENTRIES, console_overview
from qward.public.trust_source import TrustSource
from qward.receipts.receipt import MAX_RECEIPT_BYTES
from qward.receipts.receipt_checks import receipt_checks
from qward.sdk.core_client import CoreClient

__all__ = ["CONSOLE_CSP", "console_router"]

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_FILES = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return resources.files("qward.public").joinpath("console_static", name).read_bytes()


async def _receipt_body(request: Request) -> bytes:
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > 4 * MAX_RECEIPT_BYTES:
            raise InputError("the receipt is over the size limit")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        raise InputError("no receipt: drop or paste a receipt file's JSON")
    return recanonicalize_json(data, what="receipt")


def console_router(core: CoreClient, trust_source: TrustSource) -> APIRouter:
    """The console's routes: the page, its two static files and its two API calls."""
    router = APIRouter(include_in_schema=False)

    @router.get("/audit")
    def page() -> Response:
        return Response(_static("index.html"), media_type="text/html", headers=_HEADERS)

    @router.get("/audit/static/{name}")
    def static(name: str) -> Response:
        if name not in _FILES:
            raise NotFoundError(f"no console file {name!r}")
        return Response(_static(name), media_type=_FILES[name], headers=_HEADERS)

    @router.get("/audit/api/overview")
    def overview() -> dict[str, Any]:
        return console_overview(
            note=core.checkpoint(),
            trust=trust_source.current(),
            fetch=core.tile,
            limit=MAX_CONSOLE_ENTRIES,
        )

    @router.post("/audit/api/verify-receipt")
    async def verify_receipt(request: Request) -> dict[str, Any]:
        data = await _receipt_body(request)
        trust = await run_in_threadpool(trust_source.current)
        checks = await run_in_threadpool(receipt_checks, data, trust=trust)
        return {
            "verified": all(c.ok for c in checks),
            "checks": [{"name": c.name, "ok": c.ok, "message": c.message} for c in checks],
        }

    return router
