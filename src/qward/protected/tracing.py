"""OpenTelemetry spans for the core's steps: decrypt, run, sign, log append.

Spans carry digests, sizes and request ids, never key material or plaintext. With
``QWARD_TRACE_FILE`` set, finished spans are written there as JSON lines (one object per span);
otherwise the OpenTelemetry API stays a no-op unless the embedding process installs a provider.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Sequence
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

__all__ = ["TRACE_FILE_ENV", "JSONLinesExporter", "setup_tracing", "tracer"]

TRACE_FILE_ENV = "QWARD_TRACE_FILE"


class JSONLinesExporter(SpanExporter):
    """Writes each finished span as one JSON line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                self._stream.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace_id": f"{span.context.trace_id:032x}" if span.context else None,
                            "start_ns": span.start_time,
                            "end_ns": span.end_time,
                            "attributes": dict(span.attributes or {}),
                            "status": span.status.status_code.name,
                        }
                    )
                    + "\n"
                )
            self._stream.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._stream.close()


def setup_tracing() -> None:
    """Install a tracer provider exporting to ``QWARD_TRACE_FILE`` if that is set."""
    path = os.environ.get(TRACE_FILE_ENV)
    if not path:
        return
    stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - the exporter owns and closes it
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JSONLinesExporter(stream)))
    trace.set_tracer_provider(provider)


class _NoSpans:
    """Stands in for a tracer when no provider is installed: spans cost nothing then."""

    def start_as_current_span(
        self, name: str, attributes: dict[str, Any] | None = None
    ) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


@functools.cache
def tracer() -> trace.Tracer | _NoSpans:
    """The core's tracer; a free stand-in unless a tracer provider was installed before the
    first span (``setup_tracing`` runs first thing in the core process)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return _NoSpans()
    return trace.get_tracer("qward.core")
