"""Issue 11.10: a circuit on a worker without PennyLane names the missing extra, not an
"internal error"."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from qward.errors import InputError
from qward.runtime.supervisor import WorkerProcess
from qward.runtime.worker import QUANTUM_EXTRA_MISSING

from conftest import example_bytes

# Imported by every Python started with this directory on PYTHONPATH: it makes ``pennylane``
# unimportable, as in an install without the quantum extra (the real package stays installed).
_HIDE_PENNYLANE = """
import sys

class _NoPennyLane:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pennylane", "pennylane_lightning"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoPennyLane())
"""


def test_circuit_without_quantum_extra_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sitecustomize.py").write_text(_HIDE_PENNYLANE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    spec = example_bytes("iris-vqc.circuit.json")
    with pytest.raises(InputError, match=r"pip install 'qward\[quantum\]'"):
        WorkerProcess.start(
            model=spec,
            model_sha256=hashlib.sha256(spec).hexdigest(),
            content_type="application/vnd.qward.circuit+json",
        )
    assert "quantum extra" in QUANTUM_EXTRA_MISSING
