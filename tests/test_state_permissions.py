"""Issue 10.7: a state directory the operator created world-readable (0755) leaks nothing.

The core creates every file it writes with umask 077, whatever the directory's mode, so the log
database, the trust bundle, the keystore and the model store are readable by their owner only.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path


def test_files_in_a_preexisting_0755_state_dir_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "qward", "demo", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    exposed = []
    for path in state.rglob("*"):
        if path.is_symlink() or path.is_socket():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o007:
            exposed.append(f"{path.relative_to(state)} {oct(mode)}")
    names = {p.name for p in state.rglob("*")}
    assert {"log.sqlite", "trust.json", "keystore.json"} <= names
    assert exposed == []
