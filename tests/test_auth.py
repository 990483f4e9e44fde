"""Token auth on by default: roles, per-model access, upload off unless enabled, every request
in the log, and a refused request executes nothing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qward.public.auth import TOKEN_FILE, TokenStore
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_input, seal_model

from conftest import Served, example_bytes, iris_inputs, start_serve, stop_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict[str, str]]]:
    state = tmp_path_factory.mktemp("auth")
    store = TokenStore(state / TOKEN_FILE)
    tokens = {
        "iris-client": store.create(role="client", models=("iris",))[0],
        "other-client": store.create(role="client", models=("other",))[0],
        # Refused only once: a source's first refusal in an interval is logged at once, later
        # ones are aggregated (issue 10.6, tests/public/test_refusal_flood.py).
        "refused-once": store.create(role="client", models=("other",))[0],
        "auditor": store.create(role="auditor", models=())[0],
    }
    served = start_serve(state)
    trust = TrustBundle.from_bytes(
        httpx.get(served.url + "/v1/trust", headers=served.headers).content
    )
    reply = httpx.post(
        served.url + "/v1/models",
        params={"name": "iris"},
        headers=served.headers,
        content=seal_model(example_bytes("iris-mlp.onnx"), trust=trust),
    )
    assert reply.status_code == 200, reply.text
    yield served, tokens
    stop_serve(served)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _infer(url: str, token: str | None) -> httpx.Response:
    request = json.loads(example_bytes("iris-request.json"))
    return httpx.post(
        f"{url}/v2/models/iris/infer",
        json=request,
        headers=_bearer(token) if token else {},
        timeout=60,
    )


def _entries(state: Path) -> list[dict[str, object]]:
    with sqlite3.connect(state / "log.sqlite") as db:
        return [
            json.loads(bytes(d)) for (d,) in db.execute("SELECT data FROM entries ORDER BY idx")
        ]


def test_no_or_unknown_token_is_401(server: tuple[Served, dict[str, str]]) -> None:
    served, _ = server
    for token in (None, "qwt_not-a-real-token"):
        reply = _infer(served.url, token)
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"] == "Bearer"
    # The public log is open to monitors by default (issue 17); tests/public covers the setting.
    assert httpx.get(served.url + "/log/checkpoint").status_code == 200


def test_roles_and_models(server: tuple[Served, dict[str, str]]) -> None:
    served, tokens = server
    assert _infer(served.url, tokens["iris-client"]).status_code == 200
    assert _infer(served.url, tokens["other-client"]).status_code == 403
    assert _infer(served.url, tokens["auditor"]).status_code == 403
    log = served.url + "/log/checkpoint"
    assert httpx.get(log, headers=_bearer(tokens["auditor"])).status_code == 200
    assert httpx.get(log, headers=_bearer(tokens["iris-client"])).status_code == 200
    index = served.url + "/v2/repository/index"
    assert httpx.post(index, headers=_bearer(tokens["iris-client"])).status_code == 403
    assert httpx.post(index, headers=served.headers).status_code == 200


def test_refused_request_executes_nothing_and_is_logged(
    server: tuple[Served, dict[str, str]],
) -> None:
    served, tokens = server
    before = _entries(served.state)
    assert _infer(served.url, tokens["refused-once"]).status_code == 403
    new = _entries(served.state)[len(before) :]
    assert [e["type"] for e in new] == ["qward/access/v1"]
    assert new[0]["decision"] == "deny-403" and new[0]["path"] == "/v2/models/iris/infer"
    assert str(tokens["refused-once"]) not in json.dumps(new)  # the token itself is never logged


def test_allowed_request_is_logged_before_it_runs(server: tuple[Served, dict[str, str]]) -> None:
    served, tokens = server
    before = len(_entries(served.state))
    assert _infer(served.url, tokens["iris-client"]).status_code == 200
    types = [e["type"] for e in _entries(served.state)[before:]]
    assert types == ["qward/access/v1", "qward/key-use/v1", "qward/receipt/v2"]


def test_upload_is_off_unless_enabled(tmp_path: Path) -> None:
    served = start_serve(tmp_path, upload=False)
    try:
        trust = TrustBundle.from_bytes(
            httpx.get(served.url + "/v1/trust", headers=served.headers).content
        )
        reply = httpx.post(
            served.url + "/v1/models",
            params={"name": "iris"},
            headers=served.headers,
            content=seal_model(example_bytes("iris-mlp.onnx"), trust=trust),
        )
        assert reply.status_code == 403
        assert "upload is disabled" in reply.json()["error"]["message"]
        inputs, _ = iris_inputs()
        seal_input(inputs, trust=trust)  # the trust bundle is usable; only upload is refused
    finally:
        stop_serve(served)


def test_operations_endpoints_are_open(server: tuple[Served, dict[str, str]]) -> None:
    served, tokens = server
    assert httpx.get(served.url + "/livez").json() == {"status": "live"}
    assert httpx.get(served.url + "/readyz").json() == {"status": "ready"}
    # /metrics needs an auditor or admin token by default (issue 10.7).
    assert httpx.get(served.url + "/metrics").status_code == 401
    metrics = httpx.get(served.url + "/metrics", headers=_bearer(tokens["auditor"])).text
    assert 'qward_http_requests_total{method="POST",route="/v2/models/{name}/infer"' in metrics
    assert "qward_http_request_seconds_bucket" in metrics


def test_an_inference_call_that_fails_before_the_core_is_logged_once(
    server: tuple[Served, dict[str, str]],
) -> None:
    # The handler never reaches the core (the body is not JSON): its folded access record is
    # logged by the middleware before the 400 leaves, exactly once.
    served, tokens = server
    before = len(_entries(served.state))
    reply = httpx.post(
        f"{served.url}/v2/models/iris/infer",
        content=b"{not json",
        headers=_bearer(tokens["iris-client"]),
        timeout=60,
    )
    assert reply.status_code == 400
    new = _entries(served.state)[before:]
    assert [e["type"] for e in new] == ["qward/access/v1"]
    assert new[0]["decision"] == "allow" and new[0]["path"] == "/v2/models/iris/infer"


def test_a_run_the_core_refuses_still_logs_its_access_once(
    server: tuple[Served, dict[str, str]],
) -> None:
    # The access record travels with the run; the core logs it even though no model has the name
    # (and opens nothing: no key use follows).
    served, _ = server
    before = len(_entries(served.state))
    request = json.loads(example_bytes("iris-request.json"))
    reply = httpx.post(
        f"{served.url}/v2/models/no-such-model/infer",
        json=request,
        headers=served.headers,
        timeout=60,
    )
    assert reply.status_code == 404
    new = _entries(served.state)[before:]
    assert [e["type"] for e in new] == ["qward/access/v1"]
    assert new[0]["path"] == "/v2/models/no-such-model/infer"
