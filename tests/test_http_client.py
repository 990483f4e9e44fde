"""The HTTP SDK (sync and async) verifies every receipt, and refuses outputs that do not match."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from qward.errors import QwardError, VerificationError
from qward.receipts.trust import TrustBundle
from qward.sdk.http_client import AsyncHTTPClient, HTTPClient

from conftest import Served, example_bytes, iris_inputs


@pytest.fixture(scope="module")
def trust(public_url: Served) -> TrustBundle:
    return TrustBundle.from_bytes(
        httpx.get(public_url.url + "/v1/trust", headers=public_url.headers).content
    )


@pytest.fixture(scope="module")
def uploaded(public_url: Served, trust: TrustBundle) -> str:
    with HTTPClient(
        public_url.url, token=public_url.token, trust=trust, allow_software_only=True
    ) as client:
        seen: list[int] = []
        digest = client.upload_model(
            example_bytes("iris-mlp.onnx"), name="iris", progress=seen.append
        )
    assert sum(seen) > len(example_bytes("iris-mlp.onnx"))  # sealed size, reported in chunks
    return digest


def test_sync_infer_is_verified(public_url: Served, trust: TrustBundle, uploaded: str) -> None:
    inputs, seed = iris_inputs()
    with HTTPClient(
        public_url.url, token=public_url.token, trust=trust, allow_software_only=True
    ) as client:
        result = client.infer("iris", inputs, seed=seed)
    assert result.verified.body["model"]["sha256"] == uploaded
    assert {t.name: t.to_numpy().tolist() for t in result.outputs}["label"] == [0, 1, 2]


def test_async_infer_is_verified(public_url: Served, trust: TrustBundle, uploaded: str) -> None:
    inputs, _ = iris_inputs()

    async def go() -> list[int]:
        async with AsyncHTTPClient(
            public_url.url, token=public_url.token, trust=trust, allow_software_only=True
        ) as c:
            results = await asyncio.gather(*(c.infer("iris", inputs, seed=s) for s in (1, 2)))
        return [r.verified.body["seed"] for r in results]

    assert asyncio.run(go()) == [1, 2]


def test_altered_output_is_refused(public_url: Served, trust: TrustBundle, uploaded: str) -> None:
    """A server (or proxy) that changes an output byte is caught by the receipt's digest."""
    real = httpx.Client(base_url=public_url.url, headers=public_url.headers)

    def tamper(request: httpx.Request) -> httpx.Response:
        upstream = real.send(
            real.build_request(
                request.method,
                request.url.path,
                content=request.content,
                headers=dict(request.headers),
            )
        )
        body = bytearray(upstream.content)
        if request.url.path.endswith("/infer"):
            body[-1] ^= 0x01  # last byte of the last binary output
        return httpx.Response(upstream.status_code, headers=upstream.headers, content=bytes(body))

    client = HTTPClient(
        public_url.url, token=public_url.token, trust=trust, allow_software_only=True
    )
    client._http = httpx.Client(base_url=public_url.url, transport=httpx.MockTransport(tamper))
    inputs, seed = iris_inputs()
    with pytest.raises(VerificationError, match="output digest"):
        client.infer("iris", inputs, seed=seed)
    real.close()


def test_wrong_token_is_refused(public_url: Served, trust: TrustBundle, uploaded: str) -> None:
    inputs, _ = iris_inputs()
    with (
        HTTPClient(
            public_url.url, token="qwt_wrong", trust=trust, allow_software_only=True
        ) as client,
        pytest.raises(QwardError, match="not authorised"),
    ):
        client.infer("iris", inputs)


def test_cli_upload_with_progress(public_url: Served, trust: TrustBundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnx

    proto = onnx.load_model_from_string(example_bytes("iris-mlp.onnx"))
    proto.doc_string = "the iris model under another name"  # same weights, a different model file
    model = tmp_path / "iris.onnx"
    model.write_bytes(proto.SerializeToString())
    trust_file = tmp_path / "trust.json"
    trust_file.write_bytes(trust.to_bytes())
    command = [
        sys.executable,
        "-m",
        "qward",
        "upload",
        str(model),
        "--name",
        "iris-cli",
        "--url",
        public_url.url,
        "--trust",
        str(trust_file),
    ]
    env = {**os.environ, "QWARD_TOKEN": public_url.token}
    # A trust bundle from a file, with no appraisal of hardware evidence, is refused...
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "unattested-trust" in refused.stderr and "qward trust fetch" in refused.stderr
    # ... unless the caller explicitly accepts software-only isolation, which is warned about.
    done = subprocess.run(
        [*command, "--allow-software-only"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "no hardware attestation" in done.stderr
    assert "registered iris-cli" in done.stdout
    assert public_url.token not in done.stdout + done.stderr
    with HTTPClient(
        public_url.url, token=public_url.token, trust=trust, allow_software_only=True
    ) as client:
        inputs, seed = iris_inputs()
        labels = client.infer("iris-cli", inputs, seed=seed).outputs
    assert np.array_equal(dict((t.name, t.to_numpy()) for t in labels)["label"], [0, 1, 2])
