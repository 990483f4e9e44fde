"""Start ``create_app(...)`` under uvicorn in its own process, for the public server's tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from qward.receipts.trust import TrustBundle


@dataclass(frozen=True)
class App:
    """A running public server: base URL and tokens by role."""

    url: str
    tokens: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(
    state: Path, *, stderr: Any = subprocess.DEVNULL, **settings: Any
) -> subprocess.Popen[bytes]:
    """Run ``create_app(state, **settings)`` under uvicorn on a free loopback port."""
    port = _free_port()
    script = (
        "import json, sys, uvicorn\n"
        "from pathlib import Path\n"
        "from qward.public.app import create_app\n"
        "settings = json.loads(sys.argv[2])\n"
        "if 'model_repository' in settings:\n"
        "    settings['model_repository'] = Path(settings['model_repository'])\n"
        "app = create_app(Path(sys.argv[1]), **settings)\n"
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[3]), log_level='warning')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(state), json.dumps(settings), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/v2/health/live", timeout=2).status_code == 200:
                proc.url = url  # type: ignore[attr-defined]
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("the public server did not come up")


def stop_app(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started by ``start_app``."""
    proc.terminate()
    proc.wait(30)


def register_iris(app: App, name: str = "iris") -> TrustBundle:
    """Seal the bundled iris model to the server's trust bundle and upload it as ``name``."""
    from qward.receipts.trust import TrustBundle
    from qward.sdk.client import seal_model

    from conftest import example_bytes

    trust = TrustBundle.from_bytes(
        httpx.get(app.url + "/v1/trust", headers=app.auth("admin")).content
    )
    reply = httpx.post(
        app.url + "/v1/models",
        params={"name": name},
        headers=app.auth("admin"),
        content=seal_model(example_bytes("iris-mlp.onnx"), trust=trust),
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return trust
