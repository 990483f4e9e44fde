"""Finding `qward serve`'s processes through /proc (test helper)."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> list[str]:
    """The process's argv."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def child_running(pid: int, module: str) -> int | None:
    """The child of ``pid`` running ``python -m module``, if any."""
    for child in children(pid):
        try:
            argv = cmdline(child)
        except OSError:
            continue
        if module in argv and state(child) != "Z":
            return child
    return None


def state(pid: int) -> str:
    """The process state letter (``Z`` for a zombie), or ``-`` when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "-"


def uid(pid: int) -> int:
    """The real uid of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def environ(pid: int) -> bytes:
    """The environment ``pid`` was started with."""
    return Path(f"/proc/{pid}/environ").read_bytes()


__all__ = ["child_running", "children", "cmdline", "environ", "state", "uid"]
_ = os
