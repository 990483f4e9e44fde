"""Prometheus metrics (``qward_`` prefix), ``/metrics``, ``/livez`` and ``/readyz``.

Each app gets its own registry, so several servers in one process (tests) never share counters.
Labels use the route template, never the raw path, so a client cannot blow up label cardinality.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qward.core_api import CoreInterface
from qward.errors import QwardError

__all__ = ["Metrics", "MetricsMiddleware", "health_router"]


class Metrics:
    """The public server's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qward_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "qward_http_request_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = {"code": 500}

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self._app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self._metrics.requests.labels(scope["method"], template, str(status["code"])).inc()
            self._metrics.latency.labels(scope["method"], template).observe(
                time.perf_counter() - start
            )


def health_router(core: CoreInterface, metrics: Metrics) -> APIRouter:
    """``/livez`` (process up), ``/readyz`` (core reachable) and ``/metrics``."""
    router = APIRouter(tags=["operations"])

    @router.get("/livez")
    def livez() -> dict[str, str]:
        """The public process is running."""
        return {"status": "live"}

    @router.get("/readyz")
    def readyz() -> Any:
        """Ready when the protected core answers and has a signed checkpoint."""
        try:
            core.checkpoint()
        except QwardError as exc:
            return JSONResponse({"status": "not ready", "reason": exc.code}, status_code=503)
        return {"status": "ready"}

    @router.get("/metrics")
    def prometheus() -> Response:
        """Prometheus exposition format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
