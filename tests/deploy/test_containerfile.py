"""Static checks of deploy/container/Containerfile (no container engine runs in CI): a pinned,
multi-stage build whose runtime stage runs as a non-root user, has no build tools, and creates
exactly the uids the Kubernetes manifests use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from k8s_manifests import CONTAINERFILE, KUBERNETES, assemble, containers, targets
from k8s_policy import flag


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def stages(text: str) -> list[Stage]:
    """The build stages: each FROM with the instructions under it (continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    found: list[Stage] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base=words[0], name=name))
        else:
            assert found, f"{instruction} before the first FROM"
            found[-1].instructions.append((instruction, rest))
    return found


STAGES = stages(CONTAINERFILE.read_text())
RUNTIME = STAGES[-1]


def _run_text(stage: Stage) -> str:
    return " ".join(rest for op, rest in stage.instructions if op == "RUN")


def test_multi_stage_with_a_named_builder() -> None:
    assert len(STAGES) >= 2
    assert all(s.name for s in STAGES)
    copied = [rest for op, rest in RUNTIME.instructions if op == "COPY"]
    assert any(rest.startswith(f"--from={STAGES[0].name} ") for rest in copied)


def test_base_images_are_pinned() -> None:
    for stage in STAGES:
        image = stage.base
        tag = image.rsplit("/", 1)[-1]
        assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", tag), image
        assert not tag.endswith(":latest"), image


def test_runtime_stage_runs_as_a_non_root_user() -> None:
    users = [rest for op, rest in RUNTIME.instructions if op == "USER"]
    assert users, "the runtime stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert int(uid) == 10002, "the default user should be the least privileged, qward-api"


def test_no_remote_add_and_no_build_tools_in_the_runtime() -> None:
    for stage in STAGES:
        for op, rest in stage.instructions:
            assert not (op == "ADD" and re.search(r"https?://", rest)), rest
    run = _run_text(RUNTIME)
    for tool in ("build-essential", "gcc", "g++", "make ", "pip install", "git "):
        assert tool not in run, f"the runtime stage installs or runs {tool.strip()}"
    assert "libseccomp2" in run


def _created_users() -> dict[str, int]:
    run = _run_text(RUNTIME)
    made = re.findall(r"useradd [^&]*?--uid (\d+) --gid (\d+) [^&]*?(qward-[a-z]+)", run)
    for uid, gid, _name in made:
        assert uid == gid, "each service user has a group of the same number"
    return {name: int(uid) for uid, _gid, name in made}


def test_the_users_are_the_ones_the_manifests_use() -> None:
    users = _created_users()
    assert users == {
        "qward-core": 10001,
        "qward-api": 10002,
        "qward-worker": 10003,
        "qward-witness": 10004,
    }
    used: set[int] = set()
    for target in targets():
        for obj in assemble(target):
            for container in containers(obj):
                if not str(container.get("image", "")).startswith(("qward", "ghcr.io/qward/")):
                    continue
                context = container.get("securityContext", {})
                if context.get("runAsUser"):
                    used.add(context["runAsUser"])
                for name in ("--user", "--worker-user"):
                    value = flag(container, name)
                    if value is not None:
                        used.add(int(value.split(":")[0]))
    assert used == set(users.values()), f"manifests use uids {sorted(used)}"


def test_the_manifests_run_the_image_the_containerfile_labels() -> None:
    version = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', CONTAINERFILE.read_text())
    assert version is not None
    images = {
        str(c["image"])
        for target in targets()
        for obj in assemble(target)
        for c in containers(obj)
        if "qward" in str(c.get("image", ""))
    }
    assert images == {f"ghcr.io/qward/qward:{version.group(1)}"}, images
    assert (KUBERNETES / "base" / "kustomization.yaml").read_text().count("newTag:") == 1
