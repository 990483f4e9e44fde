"""Where a request's time goes: the core's OpenTelemetry spans, per request, beside the client's
view and the crypto primitives timed alone.

The core writes a JSON line per finished span when ``QWARD_TRACE_FILE`` is set (qward.protected
.tracing). Spans nest: ``qward.core.run`` is the core's whole operation; inside it
``qward.log.append`` (the access and key-use records, committed without an fsync),
``qward.decrypt`` (HPKE open), ``qward.run`` (the sandboxed worker, over a pipe),
``qward.sign`` (a receipt's own signature, per-receipt signing only) and
``qward.log.append_publish`` (the receipt entry and the checkpoint covering it: sequencing,
integrating, the checkpoint signature and the one fsync).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_input
from qward.tensors import Tensor

__all__ = ["crypto_costs", "median_ms", "print_breakdown", "span_means"]

_STAGES = (
    ("qward.log.append", "storage: access + key-use records (no fsync)"),
    ("qward.decrypt", "crypto: HPKE open of the input"),
    ("qward.run", "worker: sandboxed run over the pipe"),
    ("qward.sign", "crypto: receipt signature (per-receipt only)"),
    ("qward.log.append_publish", "storage+crypto: receipt entry, checkpoint signature, fsync"),
)


def span_means(trace: Path, requests: int) -> dict[str, float]:
    """Mean milliseconds per request of each span name in ``trace``."""
    totals: dict[str, float] = defaultdict(float)
    for line in trace.read_text().splitlines():
        span = json.loads(line)
        totals[span["name"]] += (span["end_ns"] - span["start_ns"]) / 1e6
    return {name: total / requests for name, total in totals.items()}


def _timed(fn: Callable[[], object], n: int = 200) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def crypto_costs(trust: TrustBundle, inputs: tuple[Tensor, ...]) -> dict[str, float]:
    """Milliseconds per call of the primitives on the request path, timed alone here."""
    ed = ed25519.Ed25519PrivateKey.generate()
    ml44 = mldsa.MLDSA44PrivateKey.generate()
    ml65 = mldsa.MLDSA65PrivateKey.generate()
    message = b"x" * 200
    ed_sig, ml44_sig = ed.sign(message), ml44.sign(message)
    ed_public, ml44_public = ed.public_key(), ml44.public_key()
    return {
        "HPKE seal of the input (client)": _timed(lambda: seal_input(inputs, trust=trust)),
        "checkpoint signature (Ed25519 + ML-DSA-44)": _timed(
            lambda: (ed.sign(message), ml44.sign(message))
        ),
        "receipt signature (ML-DSA-65 + Ed25519, per-receipt only)": _timed(
            lambda: (ml65.sign(message), ed.sign(message))
        ),
        "checkpoint verification (Ed25519 + ML-DSA-44)": _timed(
            lambda: (ed_public.verify(ed_sig, message), ml44_public.verify(ml44_sig, message))
        ),
    }


def print_breakdown(label: str, client_ms: float, spans: dict[str, float]) -> None:
    """Print the per-request budget: outside the core, each core stage, the core's remainder."""
    core = spans.get("qward.core.run", 0.0)
    print(f"{label}: where {client_ms:.2f} ms per request goes (means)")
    print(f"  {client_ms - core:7.3f} ms  outside the core: client or public server, socket, JSON")
    inside = 0.0
    for name, what in _STAGES:
        if name in spans:
            inside += spans[name]
            print(f"  {spans[name]:7.3f} ms  {what}")
    print(f"  {core - inside:7.3f} ms  core: framing, parsing, receipt body, inclusion proof")


def median_ms(samples: list[float]) -> float:
    """The median of ``samples`` (seconds), in milliseconds."""
    return statistics.median(samples) * 1e3
