"""Secrets reach only the core: from a file or a pipe, and never the public server's environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qward.cli.launcher import public_environment
from qward.errors import KeystoreError
from qward.protected.pkcs11_kek import MODULE_ENV, PIN_FILE_ENV, TokenConfig, read_secret_file


def _core(state: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Start a real core, wait until it listens (or exits), then stop it and keep its output.
    proc = subprocess.Popen(
        [sys.executable, "-m", "qward.protected", "--state-dir", str(state), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):
            if (state / "core.sock").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_passphrase_file_opens_the_keystore(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("file passphrase 1\n")
    secret.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWARD_KEYSTORE")}
    env["QWARD_KEYSTORE_PASSPHRASE_FILE"] = str(secret)
    first = _core(tmp_path / "s", env)
    assert "ready" in first.stderr, first.stderr
    assert b"scrypt" in (tmp_path / "s" / "keystore.json").read_bytes()
    # The same file through the flag opens it again; a wrong one is refused with no secret shown.
    del env["QWARD_KEYSTORE_PASSPHRASE_FILE"]
    again = _core(tmp_path / "s", env, "--keystore-passphrase-file", str(secret))
    assert "ready" in again.stderr, again.stderr
    secret.write_text("wrong passphrase 2\n")
    wrong = _core(tmp_path / "s", env, "--keystore-passphrase-file", str(secret))
    assert wrong.returncode == 2
    assert "wrong passphrase" in wrong.stderr and "passphrase 2" not in wrong.stderr


def test_pin_file_is_read_and_errors_never_show_it(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("123456\n")
    config = TokenConfig.from_env({MODULE_ENV: "/nonexistent.so", PIN_FILE_ENV: str(pin)})
    assert config.pin.unsafe_key() == "123456"
    assert "123456" not in repr(config)
    with pytest.raises(KeystoreError, match="cannot read the PIN file"):
        read_secret_file(str(tmp_path / "missing"), what="PIN file")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(KeystoreError, match="over 4096 bytes"):
        read_secret_file(str(big), what="PIN file")


def test_public_environment_is_an_allow_list() -> None:
    env = public_environment(
        {
            "PATH": "/usr/bin",
            "QWARD_KEYSTORE_PASSPHRASE": "s1",
            "QWARD_KEYSTORE_PASSPHRASE_FILE": "/secret",
            "QWARD_PKCS11_PIN": "s2",
            "QWARD_LOG_DATABASE": "postgresql://u:pw@h/db",
            "AWS_SECRET_ACCESS_KEY": "s3",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector",
        }
    )
    assert env == {"PATH": "/usr/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector"}
