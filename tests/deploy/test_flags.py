"""Every option the manifests pass to qward's processes is one those processes accept (their
own --help, from the installed code), so a renamed flag fails here and not in a cluster."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from k8s_manifests import assemble, containers, targets
from k8s_policy import role

_MODULES = {
    "core": ["-m", "qward.protected"],
    "public": ["-m", "qward.public"],
    "witness": ["-m", "qward.witness", "serve"],
}


def _help(which: str) -> str:
    done = subprocess.run(
        [sys.executable, *_MODULES[which], "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _options_used() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {name: set() for name in _MODULES}
    for target in targets():
        for obj in assemble(target):
            for container in containers(obj):
                which = role(container)
                if which in used:
                    words = " ".join(container.get("command", []) + container.get("args", []))
                    used[which] |= set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", words))
    return used


USED = _options_used()


@pytest.mark.parametrize("which", sorted(_MODULES))
def test_every_option_exists(which: str) -> None:
    assert USED[which], f"no {which} container found"
    accepted = set(re.findall(r"(--[a-z][a-z0-9-]*)", _help(which)))
    assert USED[which] <= accepted, f"{which}: unknown {sorted(USED[which] - accepted)}"
