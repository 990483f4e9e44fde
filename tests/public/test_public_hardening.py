"""The public server under hostile or careless clients: V2 error bodies, bad input is a 400,
optional endpoints closed by default, and the public log readable by monitors.

Each test runs a real protected core and ``create_app(...)`` under uvicorn in its own process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from public.serving import App, register_iris, start_app
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes, iris_inputs


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("public")
    core = CoreProcess.start(directory)
    store = TokenStore(directory / TOKEN_FILE)
    tokens = {role: store.create(role=role, models=())[0] for role in ("admin", "auditor")}
    tokens["client"] = store.create(role="client", models=("iris",))[0]
    yield directory, tokens
    core.stop()


@pytest.fixture(scope="module")
def default_app(state: tuple[Path, dict[str, str]]) -> Iterator[App]:
    directory, tokens = state
    proc = start_app(directory, allow_model_upload=True)
    app = App(url=proc.url, tokens=tokens)  # type: ignore[attr-defined]
    register_iris(app)
    yield app
    proc.terminate()
    proc.wait(30)


@pytest.fixture()
def open_app(state: tuple[Path, dict[str, str]]) -> Iterator[App]:
    directory, tokens = state
    proc = start_app(directory, metrics_requires_token=False, docs=True, log_requires_token=True)
    yield App(url=proc.url, tokens=tokens)  # type: ignore[attr-defined]
    proc.terminate()
    proc.wait(30)


def _iris_request() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(example_bytes("iris-request.json"))
    return doc


def _infer(app: App, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        app.url + "/v2/models/iris/infer",
        content=body,
        headers={**app.auth("client"), "Content-Type": "application/json", **headers},
        timeout=60,
    )


# Issue 11.4: every V2 error body is {"error": "<string>"}.


def test_v2_error_bodies_are_strings_for_refusals_and_unknown_routes(default_app: App) -> None:
    url = default_app.url
    unauthenticated = httpx.post(url + "/v2/models/iris/infer", json=_iris_request())
    assert unauthenticated.status_code == 401
    assert isinstance(unauthenticated.json()["error"], str)
    forbidden = httpx.post(url + "/v2/repository/index", headers=default_app.auth("client"))
    assert forbidden.status_code == 403
    assert "may not call" in forbidden.json()["error"]
    missing = httpx.get(url + "/v2/no/such/route", headers=default_app.auth("admin"))
    assert missing.status_code == 404
    assert isinstance(missing.json()["error"], str)
    v1 = httpx.get(url + "/v1/trust")
    assert v1.status_code == 401 and v1.json()["error"]["code"] == "unauthorized"


def test_tritonclient_with_a_bad_token_gets_a_readable_exception(default_app: App) -> None:
    client = triton.InferenceServerClient(default_app.url.removeprefix("http://"))
    inputs, _ = iris_inputs()
    x = triton.InferInput("X", [3, 4], "FP32")
    x.set_data_from_numpy(inputs[0].to_numpy())
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [x], headers={"Authorization": "Bearer qwt_not-a-token"})
    assert "valid bearer token is required" in str(caught.value)


# Issue 10.7: bad input is a 400 naming the problem, never a 500 or a 503.


@pytest.mark.parametrize("shape", [[3.0, 4], ["3", 4], [2**70, 4], [-3, 4], "3x4", [True, 4]])
def test_bad_v2_shapes_are_400(default_app: App, shape: Any) -> None:
    doc = _iris_request()
    doc["inputs"][0]["shape"] = shape
    reply = _infer(default_app, json.dumps(doc).encode())
    assert reply.status_code == 400, reply.text
    assert "shape" in reply.json()["error"]


def test_deeply_nested_json_is_400(default_app: App) -> None:
    depth = 100_000
    body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    reply = _infer(default_app, body)
    assert reply.status_code == 400, reply.text
    assert "nested deeper" in reply.json()["error"]


def test_one_mib_parameters_value_is_400_naming_the_limit(default_app: App) -> None:
    doc = _iris_request()
    doc["parameters"] = {"seed": 1, "note": "x" * (1024 * 1024)}
    reply = _infer(default_app, json.dumps(doc).encode())
    assert reply.status_code == 400, reply.text
    assert "byte limit" in reply.json()["error"]


def test_legitimate_v2_infer_still_works(default_app: App) -> None:
    reply = _infer(default_app, json.dumps(_iris_request()).encode())
    assert reply.status_code == 200, reply.text
    assert reply.json()["parameters"]["qward_receipt_id"]


# Issue 10.7: /metrics and the API schema are not open by default.


def test_metrics_and_docs_are_closed_by_default(default_app: App) -> None:
    url = default_app.url
    assert httpx.get(url + "/metrics").status_code == 401
    assert httpx.get(url + "/metrics", headers=default_app.auth("client")).status_code == 403
    assert httpx.get(url + "/metrics", headers=default_app.auth("auditor")).status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(url + path, headers=default_app.auth("admin")).status_code == 404, path


def test_metrics_and_docs_open_by_setting(open_app: App) -> None:
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        assert httpx.get(open_app.url + path).status_code == 200, path


# Issue 17: the public log is monitorable without a token, unless a setting says otherwise.


def test_log_checkpoint_and_tiles_are_open_by_default(default_app: App) -> None:
    checkpoint = httpx.get(default_app.url + "/log/checkpoint")
    assert checkpoint.status_code == 200, checkpoint.text
    size = int(checkpoint.text.splitlines()[1])
    assert size > 0
    tile = httpx.get(
        default_app.url + "/log/tile/0/000.p/" + str(size % 256 or 256)
        if size < 256
        else default_app.url + "/log/tile/0/000"
    )
    assert tile.status_code == 200, tile.text


def test_log_requires_token_setting(open_app: App) -> None:
    assert httpx.get(open_app.url + "/log/checkpoint").status_code == 401
    with_token = httpx.get(open_app.url + "/log/checkpoint", headers=open_app.auth("auditor"))
    assert with_token.status_code == 200
