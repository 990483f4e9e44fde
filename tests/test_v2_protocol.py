"""Open Inference Protocol V2 with the stock tritonclient, unchanged, sync and async."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio

from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_model, verify

from conftest import Served, example_bytes, iris_inputs, start_serve, stop_serve


@pytest.fixture(scope="module")
def served(public_url: Served) -> tuple[str, TrustBundle, dict[str, str]]:
    url, auth = public_url.url, public_url.headers
    trust = TrustBundle.from_bytes(httpx.get(url + "/v1/trust", headers=auth).content)
    reply = httpx.post(
        url + "/v1/models",
        headers=auth,
        params={"name": "iris"},
        content=seal_model(example_bytes("iris-mlp.onnx"), trust=trust),
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return url, trust, auth


def _expected() -> list[np.ndarray]:
    inputs, _ = iris_inputs()
    session = ort.InferenceSession(
        example_bytes("iris-mlp.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"X": inputs[0].to_numpy()})


def _request(binary: bool) -> tuple[list[triton.InferInput], list[triton.InferRequestedOutput]]:
    inputs, _ = iris_inputs()
    x = triton.InferInput("X", [3, 4], "FP32")
    x.set_data_from_numpy(inputs[0].to_numpy(), binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")
    ]
    return [x], outputs


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_sync(served: tuple[str, TrustBundle, dict[str, str]], binary: bool) -> None:
    url, trust, auth = served
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris", headers=dict(auth))
    metadata = client.get_model_metadata("iris", headers=dict(auth))
    assert [i["name"] for i in metadata["inputs"]] == ["X"]
    inputs, outputs = _request(binary)
    result = client.infer(
        "iris",
        inputs,
        outputs=outputs,
        parameters={"seed": 42},
        request_id="req-1",
        headers=dict(auth),
    )
    labels, probabilities = _expected()
    assert result.as_numpy("label").tolist() == labels.tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5)
    response = result.get_response()
    assert response["id"] == "req-1"
    receipt = response["parameters"]["qward_receipt"].encode()
    verified = verify(receipt, trust=trust)
    assert verified.bundle.index == response["parameters"]["qward_log_index"]
    assert verified.body["seed"] == 42
    client.close()


def test_tritonclient_async(served: tuple[str, TrustBundle, dict[str, str]]) -> None:
    url, _, auth = served

    async def go() -> list[list[int]]:
        client = triton_aio.InferenceServerClient(url.removeprefix("http://"))
        try:
            inputs, _ = iris_inputs()
            x = triton_aio.InferInput("X", [3, 4], "FP32")
            x.set_data_from_numpy(inputs[0].to_numpy())
            results = await asyncio.gather(
                *(client.infer("iris", [x], headers=dict(auth)) for _ in range(3))
            )
            return [r.as_numpy("label").tolist() for r in results]
        finally:
            await client.close()

    assert asyncio.run(go()) == [_expected()[0].tolist()] * 3


def test_gzip_body_and_unknown_model(served: tuple[str, TrustBundle, dict[str, str]]) -> None:
    url, _, auth = served
    request = json.loads(example_bytes("iris-request.json"))
    reply = httpx.post(
        f"{url}/v2/models/iris/infer",
        content=gzip.compress(json.dumps(request).encode()),
        headers={"Content-Encoding": "gzip", **auth},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [0, 1, 2]
    missing = httpx.post(f"{url}/v2/models/nope/infer", json=request, headers=auth)
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99999"}, "does not fit"),
        (b"garbage", {"Content-Encoding": "gzip"}, "not valid gzip"),
        (
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [1, 2]}]}',
            {},
            "do not fill shape",
        ),
    ],
)
def test_bad_requests_are_400_with_a_reason(
    served: tuple[str, TrustBundle, dict[str, str]],
    body: bytes,
    headers: dict[str, str],
    message: str,
) -> None:
    url, _, auth = served
    reply = httpx.post(f"{url}/v2/models/iris/infer", content=body, headers={**headers, **auth})
    assert reply.status_code == 400
    assert message in reply.json()["error"]


def test_model_repository_load_unload(tmp_path: Path) -> None:
    """`qward serve --model-repository` loads sealed models; unload and load work per V2."""
    from qward.sdk.core_process import CoreProcess

    state = tmp_path / "state"
    core = CoreProcess.start(state)  # creates the keys so the repository can be sealed to them
    with core.client() as connection:
        trust = connection.trust()
    core.stop()
    repository = tmp_path / "repo"
    (repository / "iris").mkdir(parents=True)
    (repository / "iris" / "model.sealed").write_bytes(
        seal_model(example_bytes("iris-mlp.onnx"), trust=trust)
    )
    served = start_serve(state, "--model-repository", str(repository))
    auth = served.headers
    try:
        client = triton.InferenceServerClient(served.url.removeprefix("http://"))
        assert client.get_model_repository_index(headers=dict(auth)) == [
            {"name": "iris", "version": "1", "state": "READY"}
        ]
        inputs, outputs = _request(True)
        labels = client.infer("iris", inputs, outputs=outputs, headers=dict(auth)).as_numpy("label")
        assert labels.tolist() == [0, 1, 2]
        client.unload_model("iris", headers=dict(auth))
        assert not client.is_model_ready("iris", headers=dict(auth))
        with pytest.raises(Exception, match="unloaded"):
            client.infer("iris", inputs, outputs=outputs, headers=dict(auth))
        client.load_model("iris", headers=dict(auth))
        assert client.is_model_ready("iris", headers=dict(auth))
        labels = client.infer("iris", inputs, outputs=outputs, headers=dict(auth)).as_numpy("label")
        assert labels.tolist() == [0, 1, 2]
        bad = httpx.post(f"{served.url}/v2/repository/models/..%2Fetc/load", headers=auth)
        assert bad.status_code in (400, 404)
        client.close()
    finally:
        stop_serve(served)
