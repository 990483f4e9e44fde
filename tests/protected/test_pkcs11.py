"""The keystore sealed under a PKCS#11 token: a fresh SoftHSM2 token per test, in a temporary
directory. The KEK is generated in the token, non-extractable and sensitive; every way of getting
the token, PIN, key or file wrong is a KeystoreError that never quotes the PIN; a core process
started on such a keystore runs the bundled model; the file keystore stays the default.

Without SoftHSM2 (``apt-get install -y softhsm2``) or python-pkcs11 the token cases are skipped and
say why, or fail where ``QWARD_REQUIRE_SOFTHSM=1`` (CI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qward.encoding import b64decode, b64encode, canonical_json
from qward.errors import CoreUnavailableError, KeystoreError
from qward.protected.handles import KeyHandle
from qward.protected.keystore import create_keystore, load_keystore
from qward.protected.pkcs11_kek import TokenConfig, TokenKEK
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes, iris_inputs

_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class SoftToken:
    """A freshly initialised SoftHSM2 token: its module, label and PINs."""

    module: str
    label: str
    pin: str
    so_pin: str

    def config(self, *, pin: str | None = None, token: str | None = None) -> TokenConfig:
        return TokenConfig(
            module=self.module,
            token=self.label if token is None else token,
            pin=KeyHandle(purpose="pin", key_id="test", key=self.pin if pin is None else pin),
        )

    def env(self) -> dict[str, str]:
        return {
            "QWARD_PKCS11_MODULE": self.module,
            "QWARD_PKCS11_TOKEN": self.label,
            "QWARD_PKCS11_PIN": self.pin,
        }

    def session(self) -> Any:
        """A logged-in session of this test process on the token (python-pkcs11)."""
        import pkcs11

        return (
            pkcs11.lib(self.module)
            .get_token(token_label=self.label)
            .open(rw=True, user_pin=self.pin)
        )


def _unavailable(reason: str) -> None:
    """Skip the token cases, or fail them where CI requires SoftHSM2 to be tested."""
    if os.environ.get("QWARD_REQUIRE_SOFTHSM") == "1":
        pytest.fail(f"QWARD_REQUIRE_SOFTHSM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture()
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftToken]:
    util = shutil.which("softhsm2-util")
    module = next((m for m in _MODULES if os.path.isfile(m)), None)
    if util is None or module is None:
        _unavailable("SoftHSM2 is not installed (apt-get install -y softhsm2)")
    if importlib.util.find_spec("pkcs11") is None:
        _unavailable("python-pkcs11 is not installed (pip install python-pkcs11)")
    assert util is not None and module is not None
    tokens = tmp_path / "softhsm-tokens"
    tokens.mkdir(mode=0o700)
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    token = SoftToken(
        module=module,
        label=f"qward-test-{secrets.token_hex(4)}",
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
    )
    init = [util, "--init-token", "--free", "--label", token.label]
    subprocess.run(
        [*init, "--pin", token.pin, "--so-pin", token.so_pin], check=True, capture_output=True
    )
    import pkcs11

    # SoftHSM2 reads SOFTHSM2_CONF and scans its token directory in C_Initialize, and python-pkcs11
    # initialises a module once per process: initialise again so this test's token is the one seen.
    library = pkcs11.lib(module)
    library.reinitialize()
    yield token
    library.finalize()


def _kek_object(state: Path, session: Any) -> Any:
    import pkcs11

    header = json.loads((state / "keystore.json").read_bytes())["protection"]
    return session.get_key(
        object_class=pkcs11.ObjectClass.SECRET_KEY,
        label=header["key_label"],
        id=bytes.fromhex(header["key_id"]),
    )


def _rewrite(state: Path, **changes: Any) -> None:
    path = state / "keystore.json"
    doc = json.loads(path.read_bytes())
    doc.update(changes)
    path.write_bytes(canonical_json(doc))


def test_create_and_reopen_under_the_token(softhsm: SoftToken, tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = create_keystore(
        state, origin="hsm.test/log", protection="pkcs11", token=softhsm.config()
    )
    assert keys.protection == "pkcs11"
    again = load_keystore(state, token=softhsm.config())
    assert again.hpke_public == keys.hpke_public
    assert again.receipt_signer.public_key == keys.receipt_signer.public_key
    assert again.origin == "hsm.test/log"
    doc = json.loads((state / "keystore.json").read_bytes())
    assert doc["protection"]["kind"] == "pkcs11"
    assert doc["protection"]["token"] == softhsm.label
    assert doc["protection"]["key_label"].startswith("qward-keystore-kek-")
    assert not (state / "keystore.key").exists()
    text = (state / "keystore.json").read_bytes()
    assert b"seed" not in text and b"hsm.test" not in text


def test_reopen_from_the_environment_and_save(
    softhsm: SoftToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    keys = create_keystore(tmp_path, origin="o", protection="pkcs11")
    before = json.loads((tmp_path / "keystore.json").read_bytes())
    keys.save()
    after = json.loads((tmp_path / "keystore.json").read_bytes())
    assert after["nonce"] != before["nonce"] and after["protection"] == before["protection"]
    monkeypatch.delenv("QWARD_PKCS11_TOKEN")  # the header names the token
    assert load_keystore(tmp_path).hpke_public == keys.hpke_public


def test_kek_is_non_extractable_and_sensitive(softhsm: SoftToken, tmp_path: Path) -> None:
    import pkcs11
    from pkcs11 import Attribute

    create_keystore(tmp_path, origin="o", protection="pkcs11", token=softhsm.config())
    with softhsm.session() as session:
        kek = _kek_object(tmp_path, session)
        assert kek[Attribute.KEY_TYPE] == pkcs11.KeyType.AES
        assert kek[Attribute.VALUE_LEN] == 32
        assert kek[Attribute.EXTRACTABLE] is False
        assert kek[Attribute.NEVER_EXTRACTABLE] is True
        assert kek[Attribute.SENSITIVE] is True
        assert kek[Attribute.ALWAYS_SENSITIVE] is True
        assert kek[Attribute.TOKEN] is True
        assert kek[Attribute.PRIVATE] is True
        assert kek[Attribute.ENCRYPT] is True and kek[Attribute.DECRYPT] is True
        assert not any(kek[a] for a in (Attribute.WRAP, Attribute.UNWRAP, Attribute.SIGN))
        with pytest.raises(pkcs11.AttributeSensitive):
            kek[Attribute.VALUE]
        # Nor can it be exported wrapped under another key.
        wrapper = session.generate_key(
            pkcs11.KeyType.AES, 256, label="wrapper", template={Attribute.WRAP: True}
        )
        with pytest.raises(pkcs11.KeyUnextractable):
            wrapper.wrap_key(kek)


def test_wrong_pin_is_refused_without_quoting_it(softhsm: SoftToken, tmp_path: Path) -> None:
    create_keystore(tmp_path, origin="o", protection="pkcs11", token=softhsm.config())
    wrong = "wrong-" + secrets.token_hex(6)
    with pytest.raises(KeystoreError, match=r"PIN .* was refused") as caught:
        load_keystore(tmp_path, token=softhsm.config(pin=wrong))
    assert wrong not in str(caught.value) and softhsm.pin not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(KeystoreError, match="was refused") as on_create:
        create_keystore(
            tmp_path / "b", origin="o", protection="pkcs11", token=softhsm.config(pin=wrong)
        )
    assert wrong not in str(on_create.value)
    assert softhsm.pin not in repr(softhsm.config())


def test_tampered_ciphertext_is_refused(softhsm: SoftToken, tmp_path: Path) -> None:
    create_keystore(tmp_path, origin="o", protection="pkcs11", token=softhsm.config())
    sealed = bytearray(
        b64decode(json.loads((tmp_path / "keystore.json").read_bytes())["ciphertext"], what="x")
    )
    sealed[len(sealed) // 2] ^= 0x01
    _rewrite(tmp_path, ciphertext=b64encode(bytes(sealed)))
    with pytest.raises(KeystoreError, match="does not open under PKCS#11 key"):
        load_keystore(tmp_path, token=softhsm.config())


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused(
    softhsm: SoftToken, tmp_path_factory: pytest.TempPathFactory, position: int, bit: int
) -> None:
    state = tmp_path_factory.mktemp("flip")
    create_keystore(state, origin="o", protection="pkcs11", token=softhsm.config())
    doc = json.loads((state / "keystore.json").read_bytes())
    field = "nonce" if position % 5 == 0 else "ciphertext"
    data = bytearray(b64decode(doc[field], what=field))
    data[position % len(data)] ^= 1 << bit
    _rewrite(state, **{field: b64encode(bytes(data))})
    with pytest.raises(KeystoreError, match="does not open"):
        load_keystore(state, token=softhsm.config())


def test_header_is_authenticated(softhsm: SoftToken, tmp_path: Path) -> None:
    keys = create_keystore(tmp_path, origin="o", protection="pkcs11", token=softhsm.config())
    header = json.loads((tmp_path / "keystore.json").read_bytes())["protection"]
    _rewrite(tmp_path, protection={**header, "note": "added"})
    with pytest.raises(KeystoreError, match="does not open"):
        load_keystore(tmp_path, token=softhsm.config())
    _rewrite(tmp_path, protection=header)
    assert load_keystore(tmp_path, token=softhsm.config()).hpke_public == keys.hpke_public


def test_missing_module_token_and_key(softhsm: SoftToken, tmp_path: Path) -> None:
    create_keystore(tmp_path, origin="o", protection="pkcs11", token=softhsm.config())
    config = softhsm.config()
    missing = TokenConfig(module=str(tmp_path / "nope.so"), token="", pin=config.pin)
    with pytest.raises(KeystoreError, match="does not exist"):
        load_keystore(tmp_path, token=missing)
    not_a_module = tmp_path / "not-a-module.so"
    not_a_module.write_bytes(b"\x7fELF but not really")
    with pytest.raises(KeystoreError, match="could not be loaded"):
        load_keystore(
            tmp_path, token=TokenConfig(module=str(not_a_module), token="", pin=config.pin)
        )
    with pytest.raises(KeystoreError, match="no single PKCS#11 token labelled 'absent'"):
        create_keystore(
            tmp_path / "b", origin="o", protection="pkcs11", token=softhsm.config(token="absent")
        )
    with pytest.raises(KeystoreError, match="QWARD_PKCS11_TOKEN names 'other'"):
        load_keystore(tmp_path, token=softhsm.config(token="other"))
    with softhsm.session() as session:
        _kek_object(tmp_path, session).destroy()
    with pytest.raises(KeystoreError, match=r"qward-keystore-kek-.* does not exist"):
        load_keystore(tmp_path, token=softhsm.config())


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ({"EXTRACTABLE": True, "SENSITIVE": True}, "is or was extractable"),
        ({"EXTRACTABLE": False, "SENSITIVE": False}, "not sensitive"),
        ("made extractable, then not", "is or was extractable"),
    ],
)
def test_a_key_that_could_leave_the_token_is_refused(
    softhsm: SoftToken, template: dict[str, bool] | str, why: str
) -> None:
    import pkcs11
    from pkcs11 import Attribute

    label, key_id = "planted", secrets.token_bytes(8)
    attrs = template if isinstance(template, dict) else {"EXTRACTABLE": True, "SENSITIVE": True}
    with softhsm.session() as session:
        key = session.generate_key(
            pkcs11.KeyType.AES,
            256,
            label=label,
            id=key_id,
            store=True,
            template={getattr(Attribute, name): value for name, value in attrs.items()},
        )
        if isinstance(template, str):
            key[Attribute.EXTRACTABLE] = False
    kek = TokenKEK(config=softhsm.config(), token=softhsm.label, key_label=label, key_id=key_id)
    with pytest.raises(KeystoreError, match=f"refusing PKCS#11 key 'planted'.*{why}"):
        kek.encrypt(b"\x00" * 12, b"keystore contents", b"aad")


def test_configuration_errors_name_the_variable() -> None:
    with pytest.raises(KeystoreError, match="QWARD_PKCS11_MODULE"):
        TokenConfig.from_env({"QWARD_PKCS11_PIN": "1234"})
    with pytest.raises(KeystoreError, match="QWARD_PKCS11_PIN"):
        TokenConfig.from_env({"QWARD_PKCS11_MODULE": "/x.so"})
    config = TokenConfig.from_env({"QWARD_PKCS11_MODULE": "/x.so", "QWARD_PKCS11_PIN": "s3cret"})
    assert "s3cret" not in repr(config)
    with pytest.raises(KeystoreError, match="QWARD_PKCS11_TOKEN"):
        TokenKEK.generate(config)
    with pytest.raises(KeystoreError, match="passphrase does not apply"):
        create_keystore(Path("/nonexistent"), origin="o", passphrase="p", protection="pkcs11")


def test_file_keystore_needs_no_pkcs11_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With python-pkcs11 made unimportable, the default keystore still works and a token keystore
    # says what is missing.
    monkeypatch.setitem(sys.modules, "pkcs11", None)
    keys = create_keystore(tmp_path / "file", origin="o")
    assert load_keystore(tmp_path / "file").hpke_public == keys.hpke_public
    (tmp_path / "hsm").mkdir()
    header = {"kind": "pkcs11", "token": "t", "key_label": "k", "key_id": "00"}
    (tmp_path / "hsm" / "keystore.json").write_bytes(
        canonical_json(
            {
                "format": "qward/keystore/v2",
                "protection": header,
                "nonce": b64encode(b"\x00" * 12),
                "ciphertext": b64encode(b"\x00" * 32),
            }
        )
    )
    config = TokenConfig.from_env({"QWARD_PKCS11_MODULE": "/x.so", "QWARD_PKCS11_PIN": "1"})
    with pytest.raises(KeystoreError, match="python-pkcs11 is not installed"):
        load_keystore(tmp_path / "hsm", token=config)


def test_file_keystore_stays_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Token settings in the environment alone do not change the kind of keystore created.
    monkeypatch.setenv("QWARD_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
    monkeypatch.setenv("QWARD_PKCS11_TOKEN", "t")
    monkeypatch.setenv("QWARD_PKCS11_PIN", "1234")
    keys = create_keystore(tmp_path, origin="o")
    assert keys.protection == "keyfile"
    assert json.loads((tmp_path / "keystore.json").read_bytes())["protection"] == {
        "kind": "keyfile"
    }
    assert (tmp_path / "keystore.key").stat().st_mode & 0o777 == 0o600
    assert load_keystore(tmp_path).protection == "keyfile"


def test_docs_example_runs(
    softhsm: SoftToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = Path(__file__).parents[2] / "docs" / "keys.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "docs/keys.md has no Python example"
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    for code in blocks:
        # A separate interpreter, with warnings as errors like the test suite.
        subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=120)


def _run_iris(core: CoreProcess) -> list[int]:
    with core.client() as connection:
        sdk = Client(connection, trust=connection.trust())
        model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp")
        inputs, seed = iris_inputs()
        run = sdk.run(model.model_sha256, inputs, seed=seed)
    assert run.verified.body["signer"]["suite"] == "MLDSA65_ED25519"
    labels = {t.name: t.to_numpy() for t in run.outputs}["label"]
    return [int(v) for v in labels.tolist()]


def test_core_process_on_a_token_keystore_runs_the_model(
    softhsm: SoftToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("QWARD_KEYSTORE_PROTECTION", "pkcs11")
    # Per-receipt signing: the receipt key on the token signs every receipt, not only checkpoints.
    monkeypatch.setenv("QWARD_RECEIPT_SIGNATURES", "per-receipt")
    state = tmp_path / "state"
    for _ in range(2):  # the first start creates the keystore in the token, the second opens it
        core = CoreProcess.start(state)
        try:
            assert _run_iris(core) == [0, 1, 2]
        finally:
            core.stop()
    assert json.loads((state / "keystore.json").read_bytes())["protection"]["kind"] == "pkcs11"
    assert not (state / "keystore.key").exists()
    assert softhsm.pin.encode() not in (state / "core.log").read_bytes()


def test_core_refuses_a_wrong_pin_or_a_file_keystore_when_pkcs11_is_asked(
    softhsm: SoftToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_keystore(tmp_path / "hsm", origin="o", protection="pkcs11", token=softhsm.config())
    create_keystore(tmp_path / "file", origin="o")
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("QWARD_KEYSTORE_PROTECTION", "pkcs11")
    with pytest.raises(CoreUnavailableError, match="protected by 'keyfile'"):
        CoreProcess.start(tmp_path / "file")
    wrong = "wrong-" + secrets.token_hex(6)
    monkeypatch.setenv("QWARD_PKCS11_PIN", wrong)
    with pytest.raises(CoreUnavailableError, match=r"PIN .* was refused") as caught:
        CoreProcess.start(tmp_path / "hsm")
    log = (tmp_path / "hsm" / "core.log").read_text()
    assert wrong not in log and wrong not in str(caught.value) and "Traceback" not in log
