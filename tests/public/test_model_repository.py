"""A model repository with bad entries still serves the good ones (issues 11.7, 10.7), and an
unloaded model comes back without a repository (issue 11.9)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from public.serving import App, start_app, stop_app
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.sdk.client import seal_model
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes


@pytest.fixture(scope="module")
def core_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, bytes]]:
    directory = tmp_path_factory.mktemp("repo-core")
    core = CoreProcess.start(directory)
    token = TokenStore(directory / TOKEN_FILE).create(role="admin", models=())[0]
    with core.client() as connection:
        sealed = seal_model(example_bytes("iris-mlp.onnx"), trust=connection.trust())
    yield directory, token, sealed
    core.stop()


def _infer(app: App, name: str) -> httpx.Response:
    return httpx.post(
        f"{app.url}/v2/models/{name}/infer",
        json=json.loads(example_bytes("iris-request.json")),
        headers=app.auth("admin"),
        timeout=60,
    )


def test_corrupt_sealed_model_and_symlinks_do_not_stop_the_server(
    core_dir: tuple[Path, str, bytes], tmp_path: Path
) -> None:
    directory, token, sealed = core_dir
    repo = tmp_path / "models"
    (repo / "iris").mkdir(parents=True)
    (repo / "iris" / "model.sealed").write_bytes(sealed)
    (repo / "broken").mkdir()
    (repo / "broken" / "model.sealed").write_bytes(b"\x00corrupt" * 100)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.sealed").write_bytes(sealed)
    os.symlink(outside, repo / "linkeddir")
    (repo / "linkedfile").mkdir()
    os.symlink(outside / "model.sealed", repo / "linkedfile" / "model.sealed")
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        proc = start_app(directory, stderr=stderr, model_repository=str(repo))
    app = App(url=proc.url, tokens={"admin": token})  # type: ignore[attr-defined]
    try:
        assert _infer(app, "iris").status_code == 200
        index = httpx.post(app.url + "/v2/repository/index", headers=app.auth("admin")).json()
        by_name = {entry["name"]: entry for entry in index}
        assert by_name["iris"]["state"] == "READY"
        for bad in ("broken", "linkeddir", "linkedfile"):
            assert by_name[bad]["state"] == "UNAVAILABLE", by_name
            assert str(repo / bad / "model.sealed") in by_name[bad]["reason"]
        assert "symlink" in by_name["linkeddir"]["reason"]
        assert _infer(app, "linkeddir").status_code == 404
    finally:
        stop_app(proc)
    logged = log.read_text()
    assert str(repo / "broken" / "model.sealed") in logged
    assert str(repo / "linkedfile" / "model.sealed") in logged


def test_unloaded_model_can_be_loaded_again_without_a_repository(
    core_dir: tuple[Path, str, bytes],
) -> None:
    directory, token, sealed = core_dir
    proc = start_app(directory, allow_model_upload=True)
    app = App(url=proc.url, tokens={"admin": token})  # type: ignore[attr-defined]
    try:
        # Registered by upload (idempotent if the other test registered it already).
        uploaded = httpx.post(
            app.url + "/v1/models",
            params={"name": "iris"},
            headers=app.auth("admin"),
            content=sealed,
            timeout=60,
        )
        assert uploaded.status_code == 200, uploaded.text
        repository = f"{app.url}/v2/repository/models/iris"
        assert httpx.post(repository + "/unload", headers=app.auth("admin")).status_code == 200
        assert _infer(app, "iris").status_code == 400
        loaded = httpx.post(repository + "/load", headers=app.auth("admin"), timeout=60)
        assert loaded.status_code == 200, loaded.text
        assert _infer(app, "iris").status_code == 200
    finally:
        stop_app(proc)
