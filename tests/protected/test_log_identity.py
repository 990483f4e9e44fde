"""The shared log identity file: made once, read strictly, signing as the log it names."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from qward.errors import FormatError, InputError, KeystoreError
from qward.protected.log_identity import LOG_IDENTITY_FORMAT, LogIdentity, main
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import open_note, sign_note


def test_a_saved_identity_loads_and_signs_checkpoints_its_verifiers_accept(tmp_path: Path) -> None:
    identity = LogIdentity.generate("example.org/log")
    path = tmp_path / "identity.json"
    identity.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = LogIdentity.load(path)
    assert loaded.origin == "example.org/log"
    body = Checkpoint(origin="example.org/log", size=1, root_hash=bytes(32)).to_body()
    note = sign_note(body, loaded.signers)
    # Verified by the verifiers of the identity as generated: same keys after the round trip.
    _, verified = open_note(note, [s.verifier() for s in identity.signers])
    assert len(verified) == 2
    # The seeds stay behind their handle: neither repr nor str of the identity shows them.
    seeds = loaded.seeds.unsafe_key()
    for text in (repr(loaded), str(loaded)):
        assert all(seed.hex() not in text and repr(seed) not in text for seed in seeds.values())


def test_an_identity_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    LogIdentity.generate().save(path)
    before = path.read_bytes()
    with pytest.raises(KeystoreError, match="never overwritten"):
        LogIdentity.generate().save(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="qward/log-identity/v0"), "format"),
        (lambda d: d.update(extra=1), "expected the fields"),
        (lambda d: d.pop("origin"), "expected the fields"),
        (lambda d: d.update(origin="has space"), "log origin"),
        (lambda d: d.update(origin=7), "origin must be a string"),
        (lambda d: d.update(ed25519_seed="AAAA"), "ed25519_seed must be 32 bytes"),
        (lambda d: d.update(mldsa44_seed="not base64!"), "mldsa44_seed"),
        (lambda d: d.update(mldsa44_seed=None), "mldsa44_seed"),
    ],
)
def test_a_damaged_identity_is_refused_naming_what_is_wrong(
    tmp_path: Path, change: object, message: str
) -> None:
    path = tmp_path / "identity.json"
    LogIdentity.generate("example.org/log").save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == LOG_IDENTITY_FORMAT
    change(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=message):
        LogIdentity.load(path)


def test_garbage_and_oversized_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_bytes(b"\xff\x00not json")
    with pytest.raises(FormatError, match="not JSON"):
        LogIdentity.load(path)
    path.write_bytes(b"{" + b" " * (70 * 1024) + b"}")
    with pytest.raises(InputError, match="larger than the limit"):
        LogIdentity.load(path)


def test_the_command_prints_the_verifier_keys_and_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "identity.json"
    assert main(["create", "--out", str(out), "--origin", "example.org/log"]) == 0
    printed = capsys.readouterr().out
    identity = LogIdentity.load(out)
    assert printed.splitlines() == [s.verifier().to_vkey() for s in identity.signers]
    assert main(["create", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never overwritten" in err
    assert main(["create", "--out", str(tmp_path / "no" / "such" / "x.json")]) == 1
    assert "cannot write" in capsys.readouterr().err
