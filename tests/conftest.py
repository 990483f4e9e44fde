"""Shared fixtures: a real protected core process on a temporary state directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from qward.client import Client
from qward.core_process import CoreProcess
from qward.core_protocol import ModelInfo
from qward.tensors import Tensor, tensors_from_json


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
