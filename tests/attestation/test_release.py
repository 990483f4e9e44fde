"""Release entries in a release log: statements prove inclusion, and nothing else verifies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qward.attestation.release import ReleaseEntry, ReleaseStatement
from qward.errors import AttestationError, FormatError, InputError, KeystoreError, NotFoundError
from qward.release.log import ReleaseLog

ORIGIN = "example.com/qward-releases"


def _entry(version: str, pcr: str = "cd" * 32) -> ReleaseEntry:
    return ReleaseEntry(
        version=version, core_sha256="ab" * 32, platforms={"tpm": {"sha256:23": pcr}}
    )


@pytest.fixture()
def log(tmp_path: Path) -> ReleaseLog:
    return ReleaseLog.create(tmp_path / "releases", origin=ORIGIN)


def test_each_published_release_is_proved_against_the_latest_checkpoint(log: ReleaseLog) -> None:
    for n in range(5):
        statement = log.publish(_entry(f"1.{n}"))
        assert statement.index == n
    statements = ReleaseLog.open(log.directory).statements()
    assert [s.entry.version for s in statements] == [f"1.{n}" for n in range(5)]
    for statement in statements:
        verified = statement.verify(origin=ORIGIN, key_sets=(log.verifiers,))
        assert verified.entry == statement.entry and verified.index == statement.index
        again = ReleaseStatement.from_bytes(statement.to_bytes())
        assert again == statement


def test_a_changed_entry_is_not_in_the_log(log: ReleaseLog) -> None:
    log.publish(_entry("1.0"))
    statement = log.publish(_entry("1.1"))
    forged = replace(statement, entry=_entry("1.1", pcr="ee" * 32))
    with pytest.raises(AttestationError) as caught:
        forged.verify(origin=ORIGIN, key_sets=(log.verifiers,))
    assert caught.value.check == "release-log"


def test_another_logs_key_or_origin_is_refused(log: ReleaseLog, tmp_path: Path) -> None:
    statement = log.publish(_entry("1.0"))
    other = ReleaseLog.create(tmp_path / "other", origin="evil.example/releases")
    with pytest.raises(AttestationError, match="release-log"):
        statement.verify(origin=ORIGIN, key_sets=(other.verifiers,))
    with pytest.raises(AttestationError, match=r"not 'evil\.example/releases'"):
        statement.verify(origin="evil.example/releases", key_sets=(log.verifiers,))


def test_release_log_keys_are_never_replaced(log: ReleaseLog) -> None:
    with pytest.raises(KeystoreError, match="already exist"):
        ReleaseLog.create(log.directory, origin=ORIGIN)
    with pytest.raises(InputError, match="origin"):
        ReleaseLog.create(log.directory.parent / "x", origin="not an origin")


@pytest.mark.parametrize(
    "doc",
    [
        {"format": "qward/release/v1", "version": "1", "core_sha256": "ab" * 32},
        {"format": "qward/release/v1", "version": "", "core_sha256": "ab" * 32, "platforms": {}},
        {
            "format": "qward/release/v1",
            "version": "1",
            "core_sha256": "AB" * 32,
            "platforms": {"tpm": {"sha256:23": "cd"}},
        },
        {
            "format": "qward/release/v1",
            "version": "1",
            "core_sha256": "ab" * 32,
            "platforms": {"tpm": {"sha256:23": "not hex"}},
        },
        {"format": "qward/release/v2", "version": "1", "core_sha256": "ab" * 32, "platforms": {}},
    ],
)
def test_malformed_release_entries_are_format_errors(doc: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        ReleaseEntry.from_json(doc)


def test_an_entry_clients_could_not_parse_is_never_published(log: ReleaseLog) -> None:
    bad = ReleaseEntry(version="1", core_sha256="ab" * 32, platforms={"tpm": {"sha256:23": "xy"}})
    with pytest.raises(FormatError, match="hex"):
        log.publish(bad)
    with pytest.raises(NotFoundError):
        log.statements()
