"""qward serve versus a plain unsecured FastAPI + ONNX Runtime server, same model, one run.

    python bench/bench_serving.py [--seconds 15] [--concurrency 8] [--runs 3]

Both servers get the same V2 JSON inference request from the same async load generator on
loopback. qward's path includes token auth, the access log entry, sealing the input, the sandboxed
worker, the log appends and a signed checkpoint covering each receipt (shared by the requests of
one batch). The servers take turns for ``--runs`` rounds; the summary gives min/median/max of the
ratios. Each run prints the CPU time every process spent per request (qward: core, public
server, workers), and a last traced pass at concurrency 1 prints where a request's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx
from _breakdown import cpu_seconds, print_breakdown, print_cpu, span_means

from qward.public.auth import TOKEN_FILE, TokenStore
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_model


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str) -> None:
    for _ in range(300):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def _load(
    url: str, body: bytes, headers: dict[str, str], seconds: float, concurrency: int
) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post(
                    url, content=body, headers={"Content-Type": "application/json"}
                )
                if response.status_code != 200:
                    raise SystemExit(f"{url}: HTTP {response.status_code} {response.text[:200]}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _report(name: str, latencies: list[float], seconds: float) -> tuple[float, float]:
    ordered = sorted(latencies)
    rate = len(ordered) / seconds
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(
        f"  {name:6s} {rate:8.1f} req/s  p50 {p50 * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms "
        f"({len(ordered)} requests)"
    )
    return rate, p99


def _serve(state: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # No access log line per request: on two cores printing it costs throughput. As root, the
    # same three processes without the uid change (this machine's Python is under /root, which
    # the service users cannot read); the separation costs nothing per request.
    env = dict(os.environ if env is None else env)
    if os.geteuid() == 0:
        env["QWARD_UNSAFE_SINGLE_USER"] = "1"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qward",
            "serve",
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--allow-model-upload",
            "--no-access-log",
        ],
        stderr=subprocess.DEVNULL,
        env=env,
    )


def _register(url: str, auth: dict[str, str], model: bytes | None) -> str:
    """The model's name on the server: the bundled iris model is served as ``iris-mlp`` already
    (one model has one name); another model is uploaded as ``bench``."""
    _wait(url + "/livez")
    if model is None:
        return "iris-mlp"
    trust = TrustBundle.from_bytes(httpx.get(url + "/v1/trust", headers=auth).content)
    httpx.post(
        url + "/v1/models",
        params={"name": "bench"},
        headers=auth,
        content=seal_model(model, trust=trust),
        timeout=60,
    ).raise_for_status()
    return "bench"


def _checkpoints(state: Path) -> int:
    """How many checkpoints the core's log holds (read-only: the core keeps writing)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{state / 'log.sqlite'}?mode=ro", uri=True)
    ) as db:
        return int(db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait()


def _traced(tmp: Path, model: bytes | None, body: bytes, requests: int) -> None:
    """Concurrency 1 against a qward serve whose core writes its spans: the per-request budget."""
    state = tmp / "traced"
    state.mkdir()
    token, _ = TokenStore(state / TOKEN_FILE).create(role="admin", models=())
    auth = {"Authorization": f"Bearer {token}"}
    trace = tmp / "spans.jsonl"
    port = _port()
    served = _serve(state, port, env={**os.environ, "QWARD_TRACE_FILE": str(trace)})
    try:
        url = f"http://127.0.0.1:{port}"
        name = _register(url, auth, model)
        headers = {**auth, "Content-Type": "application/json"}
        with httpx.Client(headers=headers, timeout=30) as client:
            for _ in range(20):
                client.post(f"{url}/v2/models/{name}/infer", content=body).raise_for_status()
            trace.write_text("")
            start = time.perf_counter()
            for _ in range(requests):
                client.post(f"{url}/v2/models/{name}/infer", content=body).raise_for_status()
            mean_ms = (time.perf_counter() - start) / requests * 1e3
    finally:
        _stop(served)
    print_breakdown("qward serve, concurrency 1", mean_ms, span_means(trace, requests))


def main() -> None:
    """Run both servers and the load, then print throughput, latency and the ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="alternating rounds per server")
    parser.add_argument("--model", type=Path, help="ONNX model (default: bundled iris MLP)")
    parser.add_argument("--request", type=Path, help="V2 JSON request for --model")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the traced pass")
    args = parser.parse_args()
    examples = resources.files("qward.examples")
    model = (
        args.model.read_bytes() if args.model else examples.joinpath("iris-mlp.onnx").read_bytes()
    )
    body = (
        args.request.read_bytes()
        if args.request
        else examples.joinpath("iris-request.json").read_bytes()
    )
    custom = model if args.model else None
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(model)
        state = Path(tmp) / "state"
        state.mkdir()
        token, _ = TokenStore(state / TOKEN_FILE).create(role="admin", models=())
        auth = {"Authorization": f"Bearer {token}"}
        plain_port, qward_port = _port(), _port()
        plain = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("plain_server.py")),
                str(model_path),
                str(plain_port),
            ]
        )
        served = _serve(state, qward_port)
        ratios: list[tuple[float, float]] = []
        try:
            plain_url, qward_url = (
                f"http://127.0.0.1:{plain_port}",
                f"http://127.0.0.1:{qward_port}",
            )
            _wait(plain_url + "/docs")
            names = {"plain": "iris", "qward": _register(qward_url, auth, custom)}
            for run in range(args.runs):
                print(f"run {run + 1} of {args.runs}:")
                results, ceilings = {}, {}
                for name, url, headers, proc in (
                    ("plain", plain_url, {}, plain),
                    ("qward", qward_url, auth, served),
                ):
                    before, signed = cpu_seconds(proc.pid), _checkpoints(state)
                    load_start = time.process_time()
                    latencies = asyncio.run(
                        _load(
                            f"{url}/v2/models/{names[name]}/infer",
                            body,
                            headers,
                            args.seconds,
                            args.concurrency,
                        )
                    )
                    load_ms = (time.process_time() - load_start) / len(latencies) * 1e3
                    results[name] = _report(name, latencies, args.seconds)
                    ceilings[name] = print_cpu(
                        name, before, cpu_seconds(proc.pid), len(latencies), load_ms
                    )
                    if name == "qward":
                        signatures = max(1, _checkpoints(state) - signed)
                        print(
                            f"  qward receipts per checkpoint signature: "
                            f"{len(latencies) / signatures:.1f}"
                        )
                (plain_rate, plain_p99), (ours, our_p99) = results["plain"], results["qward"]
                ratios.append((ours / plain_rate, our_p99 / plain_p99))
                print(
                    f"  qward/plain throughput {ratios[-1][0]:.2f}x, p99 {ratios[-1][1]:.2f}x; "
                    f"CPU-bound ceiling {ceilings['qward'] / ceilings['plain']:.2f}x"
                )
        finally:
            _stop(plain, served)
        throughput = sorted(r for r, _ in ratios)
        p99 = sorted(p for _, p in ratios)
        print(
            f"qward/plain over {args.runs} runs (min / median / max), concurrency "
            f"{args.concurrency}, {args.model or 'iris MLP'}: throughput "
            f"{throughput[0]:.2f} / {statistics.median(throughput):.2f} / {throughput[-1]:.2f}x, "
            f"p99 {p99[0]:.2f} / {statistics.median(p99):.2f} / {p99[-1]:.2f}x"
        )
        if not args.no_breakdown:
            _traced(Path(tmp), custom, body, 300)


if __name__ == "__main__":
    main()
