"""The file keystore: keys survive a reload, the wrong secret or damage is refused, and key
handles cannot leak through repr, pickle or copy."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from qward.errors import KeystoreError
from qward.protected.handles import KeyHandle
from qward.protected.keystore import create_keystore, load_keystore


def test_keyfile_keystore_round_trip(tmp_path: Path) -> None:
    keys = create_keystore(tmp_path, origin="example.test/log")
    again = load_keystore(tmp_path)
    assert again.hpke_public == keys.hpke_public
    assert again.receipt_signer.public_key == keys.receipt_signer.public_key
    assert again.origin == "example.test/log"
    assert (tmp_path / "keystore.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keystore.json").stat().st_mode & 0o777 == 0o600


def test_keystore_file_holds_no_plaintext_key(tmp_path: Path) -> None:
    create_keystore(tmp_path, origin="example.test/log")
    text = (tmp_path / "keystore.json").read_bytes()
    assert b"seed" not in text and b"origin" not in text


def test_passphrase_keystore(tmp_path: Path) -> None:
    keys = create_keystore(tmp_path, origin="o", passphrase="correct horse")
    assert load_keystore(tmp_path, passphrase="correct horse").hpke_public == keys.hpke_public
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        load_keystore(tmp_path, passphrase="wrong horse")
    with pytest.raises(KeystoreError, match="QWARD_KEYSTORE_PASSPHRASE"):
        load_keystore(tmp_path)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    create_keystore(tmp_path, origin="o")
    with pytest.raises(KeystoreError, match="already exists"):
        create_keystore(tmp_path, origin="o")


def test_damaged_keystore_is_refused(tmp_path: Path) -> None:
    create_keystore(tmp_path, origin="o")
    path = tmp_path / "keystore.json"
    data = bytearray(path.read_bytes())
    data[-20] = ord("A") if data[-20] != ord("A") else ord("B")
    path.write_bytes(bytes(data))
    with pytest.raises(KeystoreError):
        load_keystore(tmp_path)


def test_swapped_key_file_is_refused(tmp_path: Path) -> None:
    create_keystore(tmp_path, origin="o")
    (tmp_path / "keystore.key").write_bytes(b"\x00" * 32)
    with pytest.raises(KeystoreError, match="does not open"):
        load_keystore(tmp_path)


def test_key_handle_cannot_leak() -> None:
    handle = KeyHandle(purpose="unseal", key_id="abcd", key=b"very secret bytes")
    assert "very secret" not in repr(handle) and "very secret" not in str(handle)
    with pytest.raises(TypeError):
        pickle.dumps(handle)
    with pytest.raises(TypeError):
        copy.deepcopy(handle)
    with pytest.raises(TypeError):
        copy.copy(handle)
