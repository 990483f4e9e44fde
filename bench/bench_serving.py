"""qward serve versus a plain unsecured FastAPI + ONNX Runtime server, same model, one run.

    python bench/bench_serving.py [--seconds 15] [--concurrency 8]

Both servers get the same V2 JSON inference request from the same async load generator on
loopback. qward's path includes token auth, the access log entry, sealing the input, the sandboxed
worker, receipt signing, the log append and a signed checkpoint per request.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx

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


def _report(name: str, latencies: list[float], seconds: float) -> float:
    ordered = sorted(latencies)
    rate = len(ordered) / seconds
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(
        f"{name:6s} {rate:8.1f} req/s  p50 {p50 * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms "
        f"({len(ordered)} requests)"
    )
    return rate


def main() -> None:
    """Run both servers and the load, then print throughput, latency and the ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", type=Path, help="ONNX model (default: bundled iris MLP)")
    parser.add_argument("--request", type=Path, help="V2 JSON request for --model")
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
        served = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qward",
                "serve",
                "--state-dir",
                str(state),
                "--port",
                str(qward_port),
                "--allow-model-upload",
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            plain_url, qward_url = (
                f"http://127.0.0.1:{plain_port}",
                f"http://127.0.0.1:{qward_port}",
            )
            _wait(plain_url + "/docs")
            _wait(qward_url + "/livez")
            trust = TrustBundle.from_bytes(httpx.get(qward_url + "/v1/trust", headers=auth).content)
            httpx.post(
                qward_url + "/v1/models",
                params={"name": "iris"},
                headers=auth,
                content=seal_model(model, trust=trust),
                timeout=60,
            ).raise_for_status()
            results = {}
            for name, url, headers in (("plain", plain_url, {}), ("qward", qward_url, auth)):
                latencies = asyncio.run(
                    _load(
                        f"{url}/v2/models/iris/infer", body, headers, args.seconds, args.concurrency
                    )
                )
                results[name] = _report(name, latencies, args.seconds)
            print(
                f"qward/plain throughput ratio {results['qward'] / results['plain']:.2f}x "
                f"(concurrency {args.concurrency}, {args.model or 'iris MLP'})"
            )
        finally:
            plain.terminate()
            served.terminate()
            plain.wait()
            served.wait()


if __name__ == "__main__":
    main()
