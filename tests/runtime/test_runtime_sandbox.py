"""The isolation report never claims a layer whose probe got through."""

from __future__ import annotations

from qward.runtime import sandbox
from qward.runtime.determinism import platform_class, seed_everything


def test_probe_demotes_a_layer_that_does_not_hold() -> None:
    # This test process is not sandboxed, so every probe gets through.
    report = sandbox.IsolationReport()
    for layer in ("network_namespace", "landlock", "seccomp"):
        report.record(layer, True, "claimed")
    sandbox.probe(report, stage="namespaces")
    assert report.probes["write_new_file_in_tmp"] == "ALLOWED"
    assert "landlock" in report.degraded
    sandbox.probe(report, stage="final")
    assert "seccomp" in report.degraded
    assert report.to_json()["degraded"] == list(report.degraded)


def test_unenforced_layer_is_listed_as_degraded() -> None:
    report = sandbox.IsolationReport()
    report.record("seccomp", False, "library missing")
    report.record("rlimits", True, "set")
    assert report.degraded == ("seccomp",)
    assert report.to_json()["layers"]["seccomp"] == {"enforced": False, "detail": "library missing"}


def test_platform_class_names_os_arch_and_libc() -> None:
    parts = platform_class().split("-")
    assert parts[0] == "linux" and len(parts) >= 4


def test_seed_range_is_checked() -> None:
    import pytest

    from qward.errors import InputError

    for bad in (-1, 2**63, True):
        with pytest.raises(InputError, match="seed"):
            seed_everything(bad)  # type: ignore[arg-type]
