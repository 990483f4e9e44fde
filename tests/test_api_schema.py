"""Schemathesis fuzzes every operation in the OpenAPI schema: no request may cause a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import Served


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
