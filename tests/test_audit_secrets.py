"""Secrets never reach the transparency log: after a full run through `qward serve` with token
auth and a passphrase-protected keystore, no entry (and no byte of the log database) holds a
bearer token or its digest, the keystore passphrase, or any private key seed; token ids do."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from qward.protected.keystore import PASSPHRASE_ENV, load_keystore
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_input, seal_model
from qward.tlog.store import SQLiteLogStore

from conftest import example_bytes, iris_inputs, start_serve, stop_serve


def _encodings(secret: bytes) -> list[bytes]:
    """The ways a secret could be written into a JSON log entry."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def _key_seeds(state: Path, passphrase: str) -> list[bytes]:
    material = load_keystore(state, passphrase=passphrase).ring.to_material()
    seeds = [base64.b64decode(material["root"]["mldsa87_seed"])]
    for section in material.values():
        if isinstance(section, dict):
            seeds += [base64.b64decode(v) for k, v in section.items() if k.startswith("v")]
    return seeds


def test_no_secret_reaches_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passphrase = "correct horse " + secrets.token_hex(8)
    monkeypatch.setenv(PASSPHRASE_ENV, passphrase)  # the core inherits it through qward serve
    state = tmp_path / "served"
    # `qward serve` reads the token file when it starts; this logs a token-created entry.
    command = ("token", "create", "--role", "client", "--model", "iris", "--state-dir", str(state))
    created = subprocess.run(
        [sys.executable, "-m", "qward", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    client_token = created.stdout.strip()
    served = start_serve(state)
    try:
        trust = TrustBundle.from_bytes(
            httpx.get(served.url + "/v1/trust", headers=served.headers).content
        )
        registered = httpx.post(
            served.url + "/v1/models",
            params={"name": "iris"},
            headers=served.headers,
            content=seal_model(example_bytes("iris-mlp.onnx"), trust=trust),
        )
        registered.raise_for_status()
        client = {"Authorization": f"Bearer {client_token}"}
        request = json.loads(example_bytes("iris-request.json"))
        v2 = httpx.post(served.url + "/v2/models/iris/infer", json=request, headers=client)
        v2.raise_for_status()
        inputs, seed = iris_inputs()
        v1 = httpx.post(
            f"{served.url}/v1/models/{registered.json()['model_sha256']}/infer",
            params={"seed": seed},
            headers=client,
            content=seal_input(inputs, trust=trust),
        )
        v1.raise_for_status()
        bogus = "qwt_" + secrets.token_urlsafe(32)
        denied = httpx.get(served.url + "/v1/trust", headers={"Authorization": f"Bearer {bogus}"})
        assert denied.status_code == 401
        # A token pasted into a URL by mistake: the call is logged, the token is not.
        pasted = httpx.get(f"{served.url}/v2/models/{client_token}", headers=served.headers)
        assert pasted.status_code == 404
    finally:
        stop_serve(served)

    tokens = [served.token, client_token, bogus]
    principals = TokenStore(state / TOKEN_FILE).authenticate
    token_ids = [p.token_id for p in map(principals, tokens[:2]) if p is not None]
    assert len(token_ids) == 2
    forbidden = [t.encode() for t in tokens]
    forbidden += [hashlib.sha256(t.encode()).hexdigest().encode() for t in tokens]
    forbidden += [passphrase.encode()]
    for seed_bytes in _key_seeds(state, passphrase):
        assert len(seed_bytes) >= 32
        forbidden += _encodings(seed_bytes)

    with SQLiteLogStore.open(state / "log.sqlite") as store:
        entries = [entry for _, entry, _ in store.entries_with_leaf_hashes()]
        notes = list(store.checkpoints())
    stored = b"".join(p.read_bytes() for p in state.glob("log.sqlite*"))
    logged = b"\n".join(entries + notes)
    for secret in forbidden:
        assert secret not in logged and secret not in stored
    # The controls: the log does carry the callers' token ids, two runs and the redacted path.
    types = [json.loads(e)["type"] for e in entries]
    assert types.count("qward/receipt/v2") == 2 and "qward/access/v1" in types
    for token_id in token_ids:
        assert token_id.encode() in logged
    assert b"/v2/models/qwt_[redacted]" in logged
    assert b'"decision":"deny-401"' in logged and b'"action":"token-created"' in logged
