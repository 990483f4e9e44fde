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
import multiprocessing
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from qward.crypto.envelope import hpke_suite
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_input
from qward.tensors import Tensor

__all__ = [
    "cpu_seconds",
    "crypto_costs",
    "floor_costs",
    "print_breakdown",
    "print_cpu",
    "print_floor",
    "span_means",
]

# A process's role, from its command line; the first match wins.
_ROLES = (
    ("-m qward.protected", "core"),
    ("-m qward.public", "public server"),
    ("-m qward.runtime.worker", "workers"),
    ("-m qward serve", "supervisor"),
)

_STAGES = (
    ("qward.log.append", "storage: access + key-use records (no fsync)"),
    ("qward.decrypt", "crypto: HPKE open of the input"),
    ("qward.run", "worker: sandboxed run over the pipe"),
    ("qward.sign", "crypto: receipt signature (per-receipt only)"),
    (
        "qward.log.append_publish",
        "storage+crypto: receipt entry, its covering checkpoint (gathering, signature), fsync",
    ),
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
    suite = hpke_suite()
    recipient = hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    )
    wrapped = suite.encrypt(bytes(32), recipient.public_key(), b"info")
    return {
        "HPKE seal of the input (client)": _timed(lambda: seal_input(inputs, trust=trust)),
        "HPKE open of a data key (core)": _timed(
            lambda: suite.decrypt(wrapped, recipient, b"info")
        ),
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


def floor_costs(directory: Path) -> dict[str, float]:
    """Milliseconds per call of what a request needs besides crypto, timed alone here: the one
    flush to disk (a 4 KiB write and ``fdatasync`` in ``directory``, as a log commit makes) and
    a round trip to another process over a socket pair (as client to core, and core to worker)."""
    with (directory / "floor.bin").open("wb", buffering=0) as out:

        def flush() -> None:
            out.write(bytes(4096))
            os.fdatasync(out.fileno())

        flush_ms = _timed(flush)
    near, far = socket.socketpair()
    echo = multiprocessing.get_context("fork").Process(target=_echo, args=(far,), daemon=True)
    echo.start()
    far.close()
    try:

        def round_trip() -> None:
            near.sendall(b"x" * 512)
            near.recv(4096)

        trip_ms = _timed(round_trip, 1000)
    finally:
        near.close()
        echo.join(5)
    return {
        "fdatasync of a 4 KiB write (the log commit)": flush_ms,
        "socket round trip to another process (512 bytes)": trip_ms,
    }


def _echo(sock: socket.socket) -> None:
    while data := sock.recv(4096):
        sock.sendall(data)


def print_floor(crypto: dict[str, float], other: dict[str, float], goal_ms: float) -> None:
    """Print the primitives and the least a sequential checkpoint-receipt request can add: seal,
    open, one checkpoint signature and its verification, one flush, and two process round
    trips (client to core, core to worker), with no Python around them."""
    print("primitives alone (ms per call):")
    for what, ms in {**crypto, **other}.items():
        print(f"  {ms:7.3f} ms  {what}")
    floor = (
        crypto["HPKE seal of the input (client)"]
        + crypto["HPKE open of a data key (core)"]
        + crypto["checkpoint signature (Ed25519 + ML-DSA-44)"]
        + crypto["checkpoint verification (Ed25519 + ML-DSA-44)"]
        + other["fdatasync of a 4 KiB write (the log commit)"]
        + 2 * other["socket round trip to another process (512 bytes)"]
    )
    print(
        f"  {floor:7.3f} ms  floor of one sequential request (checkpoint receipts): the sum of "
        f"the above it needs; the goal is {goal_ms:.1f} ms added"
    )


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


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of ``pid``, or ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces: the fields that follow start after its closing paren.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def _role(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    return next((role for marker, role in _ROLES if marker in command), "server")


def cpu_seconds(root: int) -> dict[str, float]:
    """CPU seconds used so far by ``root`` and its descendants, summed per role (Linux only)."""
    stats = {int(p): st for p in os.listdir("/proc") if p.isdigit() and (st := _stat(p))}
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in stats.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    totals: dict[str, float] = defaultdict(float)
    for pid in tree:
        if pid in stats:
            totals[_role(pid)] += stats[pid][1]
    return dict(totals)


def print_cpu(
    label: str,
    before: dict[str, float],
    after: dict[str, float],
    requests: int,
    load_ms: float,
) -> float:
    """Print the CPU milliseconds per request each role spent between two ``cpu_seconds``, and
    the load generator's own ``load_ms``; return the CPU-bound ceiling in requests per second.

    Server and load generator share the machine's CPUs, so at full load no server can answer
    more than ``CPUs / (its CPU per request + the generator's)`` requests a second: the ratio of
    two ceilings bounds the ratio of the throughputs measured.
    """
    spent = {role: (after[role] - before.get(role, 0.0)) / requests * 1e3 for role in after}
    parts = [f"{role} {ms:.2f}" for role, ms in sorted(spent.items())]
    print(
        f"  {label} CPU per request (ms): " + ", ".join(parts) + f"; load generator {load_ms:.2f}"
    )
    return (os.cpu_count() or 1) * 1e3 / (sum(spent.values()) + load_ms)
