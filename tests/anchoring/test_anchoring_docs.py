"""The Python examples in docs/anchoring.md run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).parents[2] / "docs" / "anchoring.md"


def test_doc_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "docs/anchoring.md has no Python example"
    for code in blocks:
        # A separate interpreter, with warnings as errors like the test suite.
        subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=120)
