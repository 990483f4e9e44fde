"""Schemathesis fuzzes every operation in the OpenAPI schema: no request may cause a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from public.serving import start_app, stop_app

from qward.public.auth import TOKEN_FILE, TokenStore
from qward.sdk.core_process import CoreProcess

from conftest import Served


@pytest.fixture(scope="module")
def public_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The schema is served only with ``docs=True`` (off by default, issue 10.7)."""
    state = tmp_path_factory.mktemp("schema")
    core = CoreProcess.start(state)
    token = TokenStore(state / TOKEN_FILE).create(role="admin", models=())[0]
    proc = start_app(state, docs=True, allow_model_upload=True)
    yield Served(
        proc=proc,
        url=proc.url,  # type: ignore[attr-defined]
        state=state,
        headers={"Authorization": f"Bearer {token}"},
        token=token,
    )
    stop_app(proc)
    core.stop()


def test_openapi_schema_is_served(public_url: Served) -> None:
    schema = httpx.get(public_url.url + "/openapi.json").json()
    assert schema["info"]["title"] == "qward"
    assert "/v2/models/{name}/infer" in schema["paths"]


def test_no_request_causes_a_server_error(public_url: Served, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is part of the dev dependencies"
    done = subprocess.run(
        [
            st,
            "run",
            f"{public_url.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {public_url.token}",
            "--max-examples",
            "25",
            "--phases",
            "examples,fuzzing",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout.split("Test cases:")[-1]
