"""The core measurement: deterministic, sensitive to every measured byte, and says what changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import qward
from qward.attestation import measurement
from qward.attestation.measurement import core_measurement, pcr_after_extend
from qward.errors import InputError

PACKAGE = Path(qward.__file__).resolve().parent


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the installed qward package, to change without touching the real one."""
    copy = tmp_path / "qward"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "core.toml"
    path.write_text('state_dir = "/var/lib/qward"\n')
    return path


def test_same_tree_same_digest_wherever_it_lives(tree: Path, config: Path) -> None:
    first = core_measurement(package_root=tree, extra_paths=[config])
    again = core_measurement(package_root=tree, extra_paths=[config])
    assert first == again
    assert len(first.digest) == 32
    # The copy measures like the installed package: paths are relative, bytecode is skipped.
    assert core_measurement(package_root=PACKAGE).code == first.code
    assert core_measurement().code == first.code


def test_one_byte_changes_the_code_component_only(tree: Path, config: Path) -> None:
    before = core_measurement(package_root=tree, extra_paths=[config])
    target = tree / "attestation" / "binding.py"
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x01
    target.write_bytes(bytes(data))
    after = core_measurement(package_root=tree, extra_paths=[config])
    assert after.digest != before.digest
    assert after.differences(before) == ("code",)


def test_added_or_renamed_file_changes_it_but_bytecode_does_not(tree: Path) -> None:
    before = core_measurement(package_root=tree)
    (tree / "__pycache__").mkdir(exist_ok=True)
    (tree / "__pycache__" / "errors.cpython-311.pyc").write_bytes(b"bytecode")
    (tree / "stray.pyc").write_bytes(b"bytecode")
    assert core_measurement(package_root=tree) == before

    (tree / "plugin.py").write_text("")  # An empty file still counts: it is importable code.
    added = core_measurement(package_root=tree)
    assert added.differences(before) == ("code",)

    (tree / "plugin.py").rename(tree / "plugin2.py")
    assert core_measurement(package_root=tree).code not in (before.code, added.code)


def test_extra_file_change_shows_as_extra(tree: Path, config: Path, tmp_path: Path) -> None:
    other = tmp_path / "policy.json"
    other.write_text("{}")
    before = core_measurement(package_root=tree, extra_paths=[config, other])
    # The listing is sorted, so the order the caller names files in does not matter.
    assert core_measurement(package_root=tree, extra_paths=[other, config]) == before
    config.write_text('state_dir = "/var/lib/qward2"\n')
    after = core_measurement(package_root=tree, extra_paths=[config, other])
    assert after.differences(before) == ("extra",)
    assert core_measurement(package_root=tree).differences(before) == ("extra",)


def test_installed_distribution_shows_as_environment(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = core_measurement(package_root=tree)
    # A real (minimal) installed distribution: a dist-info directory on sys.path.
    site = tmp_path / "site"
    info = site / "Extra_Dist-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: Extra_Dist\nVersion: 1.2\n")
    monkeypatch.syspath_prepend(str(site))
    after = core_measurement(package_root=tree)
    assert after.differences(before) == ("environment",)


def test_unreadable_oversized_or_repeated_inputs_are_errors(
    tree: Path, config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InputError, match="cannot read"):
        core_measurement(package_root=tree, extra_paths=[tmp_path / "missing.toml"])
    with pytest.raises(InputError, match="twice"):
        core_measurement(package_root=tree, extra_paths=[config, config])
    with pytest.raises(InputError, match="does not exist"):
        core_measurement(package_root=tmp_path / "nowhere")
    monkeypatch.setattr(measurement, "MAX_MEASURED_FILE_BYTES", 16)
    with pytest.raises(InputError, match="over 16 bytes"):
        core_measurement(package_root=tree)


def test_extra_files_are_measured_through_symlinks(config: Path, tmp_path: Path) -> None:
    link = tmp_path / "linked.toml"
    link.symlink_to(config)
    through = core_measurement(extra_paths=[link])
    config.write_text("changed\n")
    assert core_measurement(extra_paths=[link]).differences(through) == ("extra",)


def test_pcr_after_extend_known_answer() -> None:
    # Provenance: swtpm 0.7.1 (Debian 12 package), fresh state, TPM2_PCR_Extend of PCR 23 with
    # SHA-256(b"qward"), then TPM2_PCR_Read (tpm2-pytss 3.0.0), run while writing this test.
    digest = hashlib.sha256(b"qward").digest()
    expected = "8326ea8f2fc32c204638567ae58a6e9fe8dc1f71ef674f68320a496100feda08"
    assert pcr_after_extend(digest).hex() == expected
    assert pcr_after_extend(digest, initial=bytes.fromhex(expected)) != bytes.fromhex(expected)
    with pytest.raises(InputError):
        pcr_after_extend(digest[:20])
