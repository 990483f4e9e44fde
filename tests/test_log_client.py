"""The auditor SDK against a running `qward serve`: checkpoint, tiles and proofs all verified."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from qward.errors import NotFoundError, ProofError, SignatureError
from qward.receipts.receipt import ReceiptBundle
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_input, seal_model
from qward.sdk.log_client import LogClient
from qward.tlog.checkpoint import Checkpoint

from conftest import Served, example_bytes, iris_inputs


def _run_once(url: str, trust: TrustBundle, auth: dict[str, str]) -> bytes:
    model = httpx.post(
        url + "/v1/models",
        params={"name": "iris"},
        headers=auth,
        content=seal_model(example_bytes("iris-mlp.onnx"), trust=trust),
        timeout=60,
    ).json()["model_sha256"]
    inputs, seed = iris_inputs()
    reply = httpx.post(
        f"{url}/v1/models/{model}/infer",
        params={"seed": seed},
        headers=auth,
        content=seal_input(inputs, trust=trust),
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    import json

    return json.dumps(
        reply.json()["receipt"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def test_receipt_entry_is_proved_from_tiles(public_url: Served) -> None:
    url, auth = public_url.url, public_url.headers
    trust = TrustBundle.from_bytes(httpx.get(url + "/v1/trust", headers=auth).content)
    with LogClient(url, trust=trust, token=public_url.token) as log:
        first = log.checkpoint()
        bundle = ReceiptBundle.from_bytes(_run_once(url, trust, auth))
        second = log.checkpoint()
        assert second.size > first.size
        log.verify_consistency(first, second)
        log.verify_inclusion(bundle.entry(), bundle.index, second)
        assert log.entry(bundle.index, second) == bundle.entry()
        with pytest.raises(ProofError):
            log.verify_inclusion(bundle.entry() + b" ", bundle.index, second)
        forged = Checkpoint(origin=second.origin, size=second.size, root_hash=b"\x01" * 32)
        with pytest.raises(ProofError):
            log.verify_consistency(first, forged)
        with pytest.raises(NotFoundError):
            log.entry(second.size + 5, second)


def test_checkpoint_under_other_keys_is_refused(public_url: Served, tmp_path: Path) -> None:
    url = public_url.url
    from qward.sdk.core_process import CoreProcess

    other = CoreProcess.start(tmp_path)
    try:
        with other.client() as connection:
            foreign = connection.trust()
    finally:
        other.stop()
    with (
        LogClient(url, trust=foreign, token=public_url.token) as log,
        pytest.raises(SignatureError),
    ):
        log.checkpoint()


def test_tile_endpoints_follow_the_spec(public_url: Served) -> None:
    url, auth = public_url.url, public_url.headers
    checkpoint = httpx.get(url + "/log/checkpoint", headers=auth)
    assert checkpoint.headers["content-type"].startswith("text/plain")
    size = int(checkpoint.text.split("\n")[1])
    width = size % 256
    tile = httpx.get(f"{url}/log/tile/0/000.p/{width}", headers=auth)
    assert tile.status_code == 200 and len(tile.content) == 32 * width
    assert tile.headers["content-type"] == "application/octet-stream"
    assert "immutable" in tile.headers["cache-control"]
    assert httpx.get(f"{url}/log/tile/0/000", headers=auth).status_code == 404
    assert httpx.get(f"{url}/log/tile/0/0.p/1", headers=auth).status_code == 400
