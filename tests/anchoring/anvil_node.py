"""A real Ethereum JSON-RPC node for the tests: Foundry's ``anvil``, started on a free port.

The binary is ``$QWARD_ANVIL``, else ``anvil`` on the PATH. Without it the tests that need it are
skipped, or fail where CI requires them (``QWARD_REQUIRE_ANVIL=1``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

#: anvil's first prefunded development account (its well-known, public test key).
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
CHAIN_ID = 31337
INSTALL = "npm install --prefix .tools @foundry-rs/anvil-linux-amd64@1.7.1"


def anvil_binary() -> str:
    """The anvil executable, or skip (fail with ``QWARD_REQUIRE_ANVIL=1``) naming how to get it."""
    found = os.environ.get("QWARD_ANVIL") or shutil.which("anvil")
    if found and Path(found).exists():
        return found
    reason = f"no anvil (set QWARD_ANVIL or put it on PATH; install with: {INSTALL})"
    if os.environ.get("QWARD_REQUIRE_ANVIL") == "1":
        pytest.fail(f"QWARD_REQUIRE_ANVIL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rpc(url: str, method: str, *params: object) -> object:
    """One JSON-RPC call; raises if the node answers with an error."""
    answer = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=5
    ).json()
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


class AnvilNode:
    """A running anvil process; ``stop`` kills it."""

    def __init__(self, binary: str, port: int, *, block_time: int | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        args = [binary, "--port", str(port), "--host", "127.0.0.1", "--silent"]
        if block_time is not None:
            args += ["--block-time", str(block_time)]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"anvil exited with {self._proc.returncode} during start-up")
            try:
                if int(str(rpc(self.url, "eth_chainId")), 16) == CHAIN_ID:
                    return
            except (httpx.HTTPError, RuntimeError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("anvil did not answer eth_chainId in time")

    def mine(self, blocks: int) -> None:
        rpc(self.url, "anvil_mine", hex(blocks))

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
