"""Memory and CPU from small requests (issue 10.5): bounded inflation, rate limits per token and
per address, a global limit on concurrent inferences, and oversized headers as input errors."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from public.serving import App, start_app, stop_app
from qward.errors import InputError
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.public.v2 import MAX_REQUEST_BYTES
from qward.sdk.client import seal_model
from qward.sdk.core_client import CoreClient
from qward.sdk.core_process import CoreProcess, socket_path

from conftest import example_bytes


@pytest.fixture(scope="module")
def core_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    state = tmp_path_factory.mktemp("limits")
    core = CoreProcess.start(state)
    token = TokenStore(state / TOKEN_FILE).create(role="admin", models=())[0]
    with core.client() as connection:
        sealed = seal_model(example_bytes("iris-mlp.onnx"), trust=connection.trust())
        connection.register_model(sealed, name="iris")
    yield state, token
    core.stop()


def _app(core_state: tuple[Path, str], **settings: object) -> tuple[App, object]:
    state, token = core_state
    proc = start_app(state, **settings)
    return App(url=proc.url, tokens={"admin": token}), proc  # type: ignore[attr-defined]


def _iris() -> bytes:
    return example_bytes("iris-request.json")


def test_gzip_bomb_is_refused_at_the_body_limit(core_state: tuple[Path, str]) -> None:
    app, proc = _app(core_state)
    try:
        bomb = gzip.compress(b" " * (MAX_REQUEST_BYTES + 1024 * 1024), compresslevel=9)
        assert len(bomb) < 128 * 1024
        reply = httpx.post(
            app.url + "/v2/models/iris/infer",
            content=bomb,
            headers={**app.auth("admin"), "Content-Encoding": "gzip"},
            timeout=60,
        )
        assert reply.status_code == 400, reply.text
        assert "byte limit" in reply.json()["error"]
    finally:
        stop_app(proc)  # type: ignore[arg-type]


def test_per_token_rate_limit_answers_429_with_retry_after(core_state: tuple[Path, str]) -> None:
    app, proc = _app(core_state, rate_per_token=0.5, burst_per_token=2)
    try:
        index = app.url + "/v2/repository/index"
        statuses = [httpx.post(index, headers=app.auth("admin")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = httpx.post(index, headers=app.auth("admin"))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "rate limit" in limited.json()["error"]
    finally:
        stop_app(proc)  # type: ignore[arg-type]


def test_per_address_rate_limit_answers_429(core_state: tuple[Path, str]) -> None:
    app, proc = _app(core_state, rate_per_address=0.5, burst_per_address=3)
    try:
        # The start-up probe spent one call of the burst already.
        statuses = [httpx.get(app.url + "/v2/health/live").status_code for _ in range(4)]
        assert statuses[0] == 200 and statuses[-1] == 429, statuses
    finally:
        stop_app(proc)  # type: ignore[arg-type]


async def _burst(app: App, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    app.url + "/v2/models/iris/infer", content=_iris(), headers=app.auth("admin")
                )
                for _ in range(n)
            )
        )


def test_concurrent_inference_limit_answers_503_with_retry_after(
    core_state: tuple[Path, str],
) -> None:
    app, proc = _app(core_state, max_concurrent_inferences=1, inference_queue_timeout=0.01)
    try:
        replies = asyncio.run(_burst(app, 24))
        statuses = sorted({r.status_code for r in replies})
        assert statuses == [200, 503], statuses
        busy = next(r for r in replies if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    finally:
        stop_app(proc)  # type: ignore[arg-type]


async def _burst_with(app: App, n: int, body: bytes, headers: dict[str, str]) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:
        replies = await asyncio.gather(
            *(
                client.post(
                    app.url + "/v2/models/iris/infer",
                    content=body,
                    headers={**app.auth("admin"), **headers},
                )
                for _ in range(n)
            )
        )
    for reply in replies:
        if reply.status_code == 503:
            assert "2 large inferences are running" in reply.json()["error"]
    return [r.status_code for r in replies]


def test_requests_that_may_be_large_have_fewer_slots_than_small_ones(
    core_state: tuple[Path, str],
) -> None:
    app, proc = _app(
        core_state,
        max_concurrent_inferences=64,
        max_large_inferences=2,
        inference_queue_timeout=0.01,
    )
    try:
        # Compressed, the same request may inflate to the body limit: it takes a large slot.
        compressed = asyncio.run(
            _burst_with(app, 24, gzip.compress(_iris()), {"Content-Encoding": "gzip"})
        )
        assert 503 in compressed and 200 in compressed, compressed
        assert asyncio.run(_burst_with(app, 24, _iris(), {})) == [200] * 24
    finally:
        stop_app(proc)  # type: ignore[arg-type]


def test_oversized_request_header_is_an_input_error_not_core_unavailable(
    core_state: tuple[Path, str],
) -> None:
    state, _ = core_state
    with CoreClient(socket_path(state)) as client:
        with pytest.raises(InputError, match="byte limit"):
            client.run("iris", b"", seed=0, parameters={"x": "y" * 2 * 1024 * 1024}, by_name=True)
        assert client.models()  # nothing was sent: the client and the core are still fine
