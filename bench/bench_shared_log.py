"""Several cores on one PostgreSQL log: aggregate appends/s and attested runs/s with 1, 2, 3 cores.

    python bench/bench_shared_log.py [--seconds 5] [--runs 3] [--cores 1,2,3] [--skip-runs]

Starts a throwaway PostgreSQL server (the tests' one: Debian's postgresql binaries) and, in a fresh
schema per measurement:

1. *Appends*: N writer processes, each a ``SharedLogSequencer`` under the publisher lease with 8
   threads keeping 64 appends in flight each (as concurrent requests would), for ``--seconds``.
   The baseline in the same run is one process with a plain ``Sequencer`` (the single-writer log,
   no lease). Every tenth append waits for a covering checkpoint, as a run's receipt does.
2. *Attested runs*: N real protected cores (``python -m qward.protected``, each its own keystore,
   one log identity), each driven by 4 client threads running the bundled iris model through the
   SDK (seal, key-use entry, sandboxed worker, receipt under a checkpoint, inclusion proof,
   offline verification) for ``--seconds``. Baseline: one core on the SQLite log (the default).

Each measurement runs ``--runs`` times; the table gives min/median/max and the ratio of the
median to the baseline's. On a machine with fewer CPUs than cores plus the database, more cores
cannot add throughput: the figures say how much the coordination costs, not how far it scales.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tensors import tensors_from_json

from postgres_server import PostgresServer, launch, shut_down

_THREADS = 8
_WINDOW = 64
_CLIENTS = 4
_schemas = iter(range(1_000_000))


# -- appends: one writer process (this script with --writer) -----------------------------------


def _writer(kind: str, dsn: str, seconds: float, holder: str) -> None:
    """Append for ``seconds`` after the line ``go`` on stdin; print the acknowledged count."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

    from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner
    from qward.tlog.pg_coordination import PostgresCoordination
    from qward.tlog.pg_store import PostgresLogStore
    from qward.tlog.sequencer import Sequencer
    from qward.tlog.shared_sequencer import SharedLogSequencer

    origin = "bench.example/shared"
    signers = (
        Ed25519NoteSigner(
            name=origin, private_key=ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
        ),
        MLDSA44NoteSigner(
            name=origin, private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(bytes(32))
        ),
    )
    store = PostgresLogStore.open(dsn)
    sequencer: Sequencer
    if kind == "plain":
        sequencer = Sequencer(store=store, origin=origin, signers=signers)
    else:
        sequencer = SharedLogSequencer(
            store=store,
            origin=origin,
            signers=signers,
            coordination=PostgresCoordination(store, holder=holder),
        )
    print("ready", flush=True)
    sys.stdin.readline()
    stop = time.monotonic() + seconds
    counts = [0] * _THREADS

    def run(slot: int) -> None:
        window: list[Future[Any]] = []
        n = 0
        while time.monotonic() < stop:
            entry = b'{"writer":"%s","n":%d,"pad":"%s"}' % (holder.encode(), n, b"x" * 150)
            if n % 10 == 0:
                window.append(sequencer.add_published([entry]))
            else:
                window.append(sequencer.add(entry))
            n += 1
            if len(window) >= _WINDOW:
                window.pop(0).result(timeout=60)
                counts[slot] += 1
        for future in window:
            future.result(timeout=60)
            counts[slot] += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sequencer.close(timeout=60)
    print(sum(counts), flush=True)


def _appends(server: PostgresServer, kind: str, cores: int, seconds: float) -> float:
    """Aggregate acknowledged appends/s of ``cores`` writer processes on one fresh log."""
    dsn = server.dsn(_fresh_schema(server))
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--writer", kind, dsn, str(seconds), f"core-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(cores)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    total = 0
    for process in processes:
        out, _ = process.communicate(timeout=seconds + 120)
        if process.returncode != 0:
            raise SystemExit(f"a writer failed with exit code {process.returncode}")
        total += int(out.strip().splitlines()[-1])
    return total / seconds


def _fresh_schema(server: PostgresServer) -> str:
    """The name of a new, empty schema on ``server``: one log per measurement."""
    schema = f"bench_{os.getpid()}_{next(_schemas)}"
    server.url(schema)  # creates it
    return schema


# -- attested runs: real cores -------------------------------------------------------------------


def _runs(
    server: PostgresServer | None, cores: int, seconds: float, directory: Path
) -> tuple[float, float]:
    """(runs/s over all cores, median latency in ms) of ``cores`` cores on one log."""
    env_before = dict(os.environ)
    try:
        if server is not None:
            schema = _fresh_schema(server)
            identity = directory / f"identity-{schema}.json"
            subprocess.run(
                [sys.executable, "-m", "qward", "cluster", "log-identity", "--out", str(identity)],
                check=True,
                capture_output=True,
            )
            os.environ["QWARD_LOG_DATABASE"] = server.url(schema)
            os.environ["QWARD_LOG_IDENTITY"] = str(identity)
        else:
            os.environ.pop("QWARD_LOG_DATABASE", None)
            os.environ.pop("QWARD_LOG_IDENTITY", None)
        started = [
            CoreProcess.start(Path(tempfile.mkdtemp(dir=directory, prefix="core-")))
            for _ in range(cores)
        ]
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    try:
        model = resources.files("qward.examples").joinpath("iris-mlp.onnx").read_bytes()
        inputs, params = tensors_from_json(
            resources.files("qward.examples").joinpath("iris-request.json").read_bytes()
        )
        models = []
        for core in started:
            with core.client() as connection:
                sdk = Client(connection, trust=connection.trust())
                models.append(sdk.register(model, name="iris").model_sha256)
        latencies: list[float] = []
        lock = threading.Lock()
        begin = threading.Event()
        stop_at: list[float] = []

        def drive(core: CoreProcess, model_sha256: str) -> None:
            mine: list[float] = []
            with core.client() as connection:
                sdk = Client(connection, trust=connection.trust())
                begin.wait()
                while time.monotonic() < stop_at[0]:
                    started_at = time.perf_counter()
                    sdk.run(model_sha256, inputs, seed=int(params["seed"]))
                    mine.append(time.perf_counter() - started_at)
            with lock:
                latencies.extend(mine)

        threads = [
            threading.Thread(target=drive, args=(core, sha))
            for core, sha in zip(started, models, strict=True)
            for _ in range(_CLIENTS)
        ]
        for thread in threads:
            thread.start()
        stop_at.append(time.monotonic() + seconds)
        begin.set()
        for thread in threads:
            thread.join()
        return len(latencies) / seconds, statistics.median(latencies) * 1000
    finally:
        for core in started:
            core.stop()


# -- the table -----------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    return f"{min(values):9.1f} {statistics.median(values):9.1f} {max(values):9.1f}"


def _measure(label: str, runs: int, once: Callable[[], float], base: float | None) -> float:
    values = [once() for _ in range(runs)]
    median = statistics.median(values)
    ratio = "" if base is None else f"{median / base:6.2f}x"
    print(f"{label:<44} {_spread(values)} {ratio}", flush=True)
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cores", default="1,2,3")
    parser.add_argument("--skip-runs", action="store_true", help="appends only")
    args = parser.parse_args()
    counts = [int(c) for c in args.cores.split(",")]
    server = launch()
    try:
        print(f"{os.cpu_count()} CPUs; {args.seconds} s per measurement, {args.runs} runs")
        print(
            f"{'appends/s (8 threads x 64 in flight per process)':<44} {'min':>9} "
            f"{'median':>9} {'max':>9} ratio"
        )
        base = _measure(
            "1 process, single-writer Sequencer (baseline)",
            args.runs,
            lambda: _appends(server, "plain", 1, args.seconds),
            None,
        )
        for n in counts:
            _measure(
                f"{n} core(s), shared log under the lease",
                args.runs,
                lambda n=n: _appends(server, "shared", n, args.seconds),  # type: ignore[misc]
                base,
            )
        if args.skip_runs:
            return
        with tempfile.TemporaryDirectory() as directory:
            print(
                f"{'attested iris runs/s (4 clients per core)':<44} {'min':>9} "
                f"{'median':>9} {'max':>9} ratio  p50 ms"
            )
            latencies: dict[str, list[float]] = {}

            def once(label: str, pg: PostgresServer | None, n: int) -> float:
                rate, p50 = _runs(pg, n, args.seconds, Path(directory))
                latencies.setdefault(label, []).append(p50)
                return rate

            base = _measure(
                "1 core, SQLite log (baseline)",
                args.runs,
                lambda: once("sqlite", None, 1),
                None,
            )
            for n in counts:
                _measure(
                    f"{n} core(s), one PostgreSQL log",
                    args.runs,
                    lambda n=n: once(f"pg{n}", server, n),  # type: ignore[misc]
                    base,
                )
            for label, values in latencies.items():
                print(f"  p50 latency {label}: {statistics.median(values):.1f} ms")
    finally:
        shut_down(server)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        _writer(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    else:
        main()
