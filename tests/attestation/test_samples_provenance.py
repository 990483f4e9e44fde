"""Every sample file is listed in data/README.md with its SHA-256, and matches it."""

from __future__ import annotations

from .samples import DATA, readme_checksums, sha256


def test_every_sample_is_documented_and_unchanged() -> None:
    table = readme_checksums()
    files = {p.name for p in DATA.iterdir() if not p.name.startswith("README")}
    assert files == set(table)
    for name, digest in table.items():
        assert sha256(name) == digest, name
