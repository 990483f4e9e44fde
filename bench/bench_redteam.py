"""Red team against the public server: legitimate V2 clients while attackers push (issue 10.5).

    python bench/bench_redteam.py [--seconds 60] [--clients 8]

Starts a real protected core and ``create_app(...)`` under uvicorn in a separate process, then for
``--seconds`` runs ``--clients`` legitimate clients doing V2 infer on the bundled iris model while
attackers send gzip bombs, amplification-sized inputs (a 1 MiB ``parameters`` value and a huge
declared shape), unauthenticated floods and 100k-deep JSON. It samples the public server's RSS
from ``/proc/<pid>/status`` and prints max RSS, the legitimate success rate, p50/p99 latency and
the attack responses by status. The issue's bound: RSS < 256 MB with legitimate requests served.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx

from qward.public.auth import TOKEN_FILE, TokenStore
from qward.sdk.client import seal_model
from qward.sdk.core_process import CoreProcess

_SERVER = (
    "import sys, uvicorn\n"
    "from pathlib import Path\n"
    "from qward.public.app import create_app\n"
    "app = create_app(Path(sys.argv[1]))\n"
    "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), log_level='error')\n"
)


def _example(name: str) -> bytes:
    return resources.files("qward.examples").joinpath(name).read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _attacks(request: dict[str, object]) -> list[tuple[str, bytes, dict[str, str]]]:
    bomb = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)
    amplified = json.loads(json.dumps(request))
    amplified["parameters"] = {"note": "x" * (1024 * 1024)}
    shaped = json.loads(json.dumps(request))
    shaped["inputs"][0]["shape"] = [2**70, 4]
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        ("gzip-bomb", bomb, {"Content-Encoding": "gzip"}),
        ("amplification", json.dumps(amplified).encode(), {}),
        ("huge-shape", json.dumps(shaped).encode(), {}),
        ("deep-json", deep, {}),
        ("unauthenticated", json.dumps(request).encode(), {"Authorization": ""}),
    ]


async def _legit(url: str, headers: dict[str, str], body: bytes, end: float, out: list) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                reply = await client.post(url, content=body, headers=headers)
                out.append((reply.status_code, time.monotonic() - started))
            except httpx.HTTPError:
                out.append((0, time.monotonic() - started))


async def _attacker(
    url: str,
    headers: dict[str, str],
    attack: tuple[str, bytes, dict[str, str]],
    end: float,
    out: collections.Counter[str],
) -> None:
    name, body, extra = attack
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < end:
            try:
                reply = await client.post(url, content=body, headers={**headers, **extra})
                out[f"{name} {reply.status_code}"] += 1
            except httpx.HTTPError as exc:
                out[f"{name} {type(exc).__name__}"] += 1


async def _sample(pid: int, end: float, out: list[float]) -> None:
    while time.monotonic() < end:
        out.append(_rss_mb(pid))
        await asyncio.sleep(0.05)


async def _run(url: str, token: str, pid: int, seconds: float, clients: int) -> None:
    request = json.loads(_example("iris-request.json"))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    infer = url + "/v2/models/iris/infer"
    legit: list[tuple[int, float]] = []
    attacks: collections.Counter[str] = collections.Counter()
    rss: list[float] = [_rss_mb(pid)]
    end = time.monotonic() + seconds
    await asyncio.gather(
        *(_legit(infer, headers, json.dumps(request).encode(), end, legit) for _ in range(clients)),
        *(_attacker(infer, headers, a, end, attacks) for a in _attacks(request)),
        _sample(pid, end, rss),
    )
    ok = [t for status, t in legit if status == 200]
    latencies = sorted(ok) or [0.0]
    print(f"public server RSS: start {rss[0]:.0f} MB, max {max(rss):.0f} MB (bound 256 MB)")
    print(
        f"legitimate: {len(ok)}/{len(legit)} succeeded ({100 * len(ok) / max(1, len(legit)):.1f}%),"
        f" p50 {1000 * statistics.median(latencies):.0f} ms,"
        f" p99 {1000 * latencies[int(0.99 * (len(latencies) - 1))]:.0f} ms"
    )
    print("legitimate statuses:", dict(collections.Counter(s for s, _ in legit)))
    print("attack responses:")
    for key, count in sorted(attacks.items()):
        print(f"  {key}: {count}")


def main() -> None:
    """Run the red-team benchmark and print its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        core = CoreProcess.start(state)
        token = TokenStore(state / TOKEN_FILE).create(role="admin", models=())[0]
        with core.client() as connection:
            connection.register_model(
                seal_model(_example("iris-mlp.onnx"), trust=connection.trust()), name="iris"
            )
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-c", _SERVER, str(state), str(port)])
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/v2/health/live", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            asyncio.run(_run(url, token, server.pid, args.seconds, args.clients))
        finally:
            server.terminate()
            server.wait(30)
            core.stop()


if __name__ == "__main__":
    main()
