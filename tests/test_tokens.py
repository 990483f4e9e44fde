"""Tokens: explicit model grants, expiry, revocation, and a running server that follows the file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qward.errors import InputError, NotFoundError
from qward.public.auth import TOKEN_FILE, TokenStore


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_expired_tokens_do_not_authenticate(tmp_path: Path) -> None:
    clock = _Clock()
    store = TokenStore(tmp_path / TOKEN_FILE, clock=clock)
    token, principal = store.create(role="client", models=("m",), lifetime=3600)
    assert store.authenticate(token) == principal
    clock.now += 3599
    assert store.authenticate(token) == principal
    clock.now += 1
    assert store.authenticate(token) is None


def test_tokens_without_expiry_are_listed_as_such(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / TOKEN_FILE)
    _, principal = store.create(role="admin", models=(), lifetime=None)
    assert principal.expires_at is None
    assert [p.token_id for p in store.principals()] == [principal.token_id]


def test_a_revoked_token_is_refused_by_a_store_that_was_already_running(tmp_path: Path) -> None:
    path = tmp_path / TOKEN_FILE
    token, principal = TokenStore(path).create(role="client", models=("m",))
    running = TokenStore(path)  # the server's store, loaded before the revocation
    assert running.authenticate(token) == principal
    done = subprocess.run(
        [sys.executable, "-m", "qward", "token", "revoke", principal.token_id,
         "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    time.sleep(1.1)  # the store looks at the file at most once a second for known tokens
    assert running.authenticate(token) is None
    assert running.principals()[0].revoked_at is not None


def test_a_new_token_works_at_once_on_a_running_store(tmp_path: Path) -> None:
    path = tmp_path / TOKEN_FILE
    running = TokenStore(path)
    token, principal = TokenStore(path).create(role="auditor", models=())
    assert running.authenticate(token) == principal


def test_a_token_file_that_does_not_parse_authenticates_nobody(tmp_path: Path) -> None:
    path = tmp_path / TOKEN_FILE
    token, _ = TokenStore(path).create(role="admin", models=())
    running = TokenStore(path)
    path.write_text('{"tokens": "garbage"}')
    time.sleep(1.1)
    assert running.authenticate(token) is None


def test_saving_keeps_the_files_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / TOKEN_FILE
    TokenStore(path).create(role="admin", models=())
    os.chmod(path, 0o640)
    TokenStore(path).create(role="auditor", models=())
    assert path.stat().st_mode & 0o777 == 0o640


def test_revoking_an_unknown_token_names_it(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        TokenStore(tmp_path / TOKEN_FILE).revoke("nope")


def test_a_lifetime_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        TokenStore(tmp_path / TOKEN_FILE).create(role="admin", models=(), lifetime=0)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", "token", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_client_token_needs_a_model_or_an_explicit_all_models(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    refused = _cli("create", "--role", "client", "--state-dir", state)
    assert refused.returncode == 2 and "--all-models" in refused.stderr
    assert not (tmp_path / "state" / TOKEN_FILE).exists()
    granted = _cli("create", "--role", "client", "--all-models", "--state-dir", state)
    assert granted.returncode == 0, granted.stderr
    listed = _cli("list", "--state-dir", state)
    assert "client" in listed.stdout and "*" in listed.stdout
    # Never the secret or its digest.
    secret = granted.stdout.strip().splitlines()[-1]
    assert secret not in listed.stdout and secret[:12] not in listed.stdout
