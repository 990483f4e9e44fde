"""A keystore KEK that lives in a PKCS#11 token (a hardware security module, or SoftHSM2).

WARNING: this module handles the token's user PIN. Only ``qward.protected`` may import it.

The keystore file's contents are sealed by the token itself: ``C_Encrypt``/``C_Decrypt`` with
``CKM_AES_GCM`` under an AES-256 key generated inside the token with ``CKA_TOKEN``,
``CKA_SENSITIVE`` and ``CKA_EXTRACTABLE`` false. The KEK's bytes therefore never exist in this
process; what this process sees is the keystore's plaintext after the token has opened it.

Why AES-GCM in the token rather than wrapping a per-file data key with ``CKM_AES_KEY_WRAP_PAD``:
SoftHSM2 2.6 offers GCM for single-part ``C_Encrypt``/``C_Decrypt`` with a caller-chosen IV and
AAD, so the keystore header is authenticated by the token in one call. Its key-wrap-with-padding
works only through ``C_WrapKey``/``C_UnwrapKey`` (``C_Encrypt`` answers ``CKR_MECHANISM_INVALID``),
is the mis-numbered KWP mechanism (python-pkcs11 documents this), and unwrapping would have to
bring the data key back into the process as an extractable object anyway.

Configuration comes from the environment: ``QWARD_PKCS11_MODULE`` (the module's path),
``QWARD_PKCS11_TOKEN`` (the token label) and ``QWARD_PKCS11_PIN`` (the user PIN, which no message
ever contains). python-pkcs11 is imported only when a token is used, so the default file keystore
needs no PKCS#11 library.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

from qward.errors import KeystoreError
from qward.protected.handles import KeyHandle

if TYPE_CHECKING:
    from pkcs11 import Session

__all__ = [
    "KIND",
    "MODULE_ENV",
    "PIN_ENV",
    "PIN_FILE_ENV",
    "TOKEN_ENV",
    "TokenConfig",
    "TokenKEK",
    "read_secret_file",
]

KIND = "pkcs11"
MODULE_ENV = "QWARD_PKCS11_MODULE"
TOKEN_ENV = "QWARD_PKCS11_TOKEN"  # noqa: S105 - a variable name, not a secret
PIN_ENV = "QWARD_PKCS11_PIN"
#: A file holding the PIN, readable only by the core's user; used when ``PIN_ENV`` is unset.
PIN_FILE_ENV = "QWARD_PKCS11_PIN_FILE"
_MAX_SECRET_FILE = 4096
_LABEL_PREFIX = "qward-keystore-kek-"
_TAG_BITS = 128
# A PKCS#11 session handle is not safe to share between threads, and a second C_Login on a token
# that already has a logged-in session fails; one token operation at a time keeps both simple.
_TOKEN_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class TokenConfig:
    """Where the token is and how to log in: the module path, the token label and the user PIN.

    ``token`` may be empty when opening a keystore: the label recorded in its header is used.
    """

    module: str
    token: str
    pin: KeyHandle[str]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenConfig:
        """Read ``QWARD_PKCS11_MODULE``, ``QWARD_PKCS11_TOKEN`` and ``QWARD_PKCS11_PIN``."""
        env = os.environ if environ is None else environ
        module = env.get(MODULE_ENV, "")
        pin = env.get(PIN_ENV, "")
        if not pin and env.get(PIN_FILE_ENV):
            pin = read_secret_file(env[PIN_FILE_ENV], what="PKCS#11 PIN file")
        if not module:
            raise KeystoreError(
                f"keystore protection pkcs11 needs {MODULE_ENV}: the PKCS#11 module's path "
                "(for example /usr/lib/softhsm/libsofthsm2.so)"
            )
        if not pin:
            raise KeystoreError(
                f"keystore protection pkcs11 needs the token's user PIN in {PIN_ENV} "
                f"or {PIN_FILE_ENV}"
            )
        return cls(
            module=module,
            token=env.get(TOKEN_ENV, ""),
            pin=KeyHandle(purpose="pkcs11-user-pin", key_id=env.get(TOKEN_ENV, ""), key=pin),
        )


def read_secret_file(path: str, *, what: str) -> str:
    """A passphrase or PIN kept in a file: its first line, read through a size limit.

    The message on failure names the file, never its contents.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise KeystoreError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise KeystoreError(f"the {what} {path} is over {_MAX_SECRET_FILE} bytes")
    secret = data.decode("utf-8", "replace").splitlines()[0] if data.strip() else ""
    if not secret:
        raise KeystoreError(f"the {what} {path} is empty")
    return secret


def _pkcs11() -> ModuleType:
    try:
        import pkcs11
    except ImportError:
        raise KeystoreError(
            "the keystore is protected by a PKCS#11 token but python-pkcs11 is not installed "
            "(pip install 'qward[pkcs11]')"
        ) from None
    return pkcs11


def _why(exc: BaseException) -> str:
    # python-pkcs11 names the CKR_* code by the exception's class; its message may quote search
    # templates, so only the class name is passed on.
    return type(exc).__name__


class _AESKey(Protocol):
    """The part of a python-pkcs11 secret key object used here. (Its ``SecretKey`` type omits the
    encrypt and decrypt mixins that the runtime objects of an AES key have.)"""

    def __getitem__(self, attribute: Any) -> Any: ...

    def encrypt(self, data: bytes, **kwargs: Any) -> bytes | Iterator[bytes]: ...

    def decrypt(self, data: bytes, **kwargs: Any) -> bytes | Iterator[bytes]: ...


class TokenKEK:
    """An AES-256 key inside a PKCS#11 token that seals and opens the keystore (AES-GCM).

    Build one with ``generate`` (a new key in the token) or ``from_protection`` (the key a
    keystore header names). Every operation opens its own logged-in session and closes it.
    """

    def __init__(self, *, config: TokenConfig, token: str, key_label: str, key_id: bytes) -> None:
        self._config = config
        self._token = token
        self._label = key_label
        self._id = key_id

    @classmethod
    def generate(cls, config: TokenConfig) -> TokenKEK:
        """Generate a new non-extractable, sensitive AES-256 key on the configured token."""
        if not config.token:
            raise KeystoreError(f"keystore protection pkcs11 needs the token label in {TOKEN_ENV}")
        kek = cls(
            config=config,
            token=config.token,
            key_label=_LABEL_PREFIX + secrets.token_hex(8),
            key_id=secrets.token_bytes(16),
        )
        kek._generate()
        return kek

    @classmethod
    def from_protection(cls, protection: Mapping[str, Any], config: TokenConfig) -> TokenKEK:
        """The KEK a keystore header names; the configured token, if any, must be that one."""
        token, label, key_id = (protection.get(k) for k in ("token", "key_label", "key_id"))
        if not all(isinstance(v, str) and v for v in (token, label, key_id)):
            raise KeystoreError("keystore is damaged: its pkcs11 protection header is incomplete")
        assert isinstance(token, str) and isinstance(label, str) and isinstance(key_id, str)
        if config.token and config.token != token:
            raise KeystoreError(
                f"keystore is sealed under PKCS#11 token {token!r}, "
                f"but {TOKEN_ENV} names {config.token!r}"
            )
        try:
            raw_id = bytes.fromhex(key_id)
        except ValueError:
            raise KeystoreError("keystore is damaged: its pkcs11 key id is not hex") from None
        return cls(config=config, token=token, key_label=label, key_id=raw_id)

    @property
    def protection(self) -> dict[str, Any]:
        """The keystore header that names this key (authenticated as AAD with the contents)."""
        return {
            "kind": KIND,
            "token": self._token,
            "key_label": self._label,
            "key_id": self._id.hex(),
        }

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """AES-GCM ``data`` inside the token; returns ciphertext || 16-byte tag."""
        return self._gcm("encrypt", nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """Open AES-GCM ``data`` inside the token; any failure means wrong key or damage."""
        return self._gcm("decrypt", nonce, data, aad)

    def __repr__(self) -> str:
        return f"TokenKEK(token={self._token!r}, key_label={self._label!r})"

    def _where(self) -> str:
        return f"PKCS#11 key {self._label!r} on token {self._token!r}"

    def _gcm(self, operation: str, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        p11 = _pkcs11()
        with self._session() as session:
            key = self._key(session)
            run = key.encrypt if operation == "encrypt" else key.decrypt
            try:
                param = p11.GCMParams(nonce, aad, _TAG_BITS)
                out = run(data, mechanism=p11.Mechanism.AES_GCM, mechanism_param=param)
            except p11.PKCS11Error as exc:
                if operation == "encrypt":
                    raise KeystoreError(
                        f"{self._where()} could not seal the keystore ({_why(exc)})"
                    ) from None
                # SoftHSM2 reports a bad GCM tag as CKR_GENERAL_ERROR rather than
                # CKR_ENCRYPTED_DATA_INVALID, so no code is singled out: every failure is a refusal.
                raise KeystoreError(
                    f"keystore does not open under {self._where()}: wrong key, or damaged"
                ) from None
        if not isinstance(out, bytes):
            raise KeystoreError(f"{self._where()} returned no single result for {operation}")
        return out

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A logged-in read/write session on the token, closed on exit."""
        p11 = _pkcs11()
        module = self._config.module
        if not os.path.isfile(module):
            raise KeystoreError(f"PKCS#11 module {module!r} does not exist ({MODULE_ENV})")
        with _TOKEN_LOCK:
            try:
                library = p11.lib(module)
            except p11.PKCS11Error as exc:
                raise KeystoreError(
                    f"PKCS#11 module {module!r} could not be loaded or initialised ({_why(exc)})"
                ) from None
            try:
                token = library.get_token(token_label=self._token)
            except (p11.NoSuchToken, p11.MultipleTokensReturned):
                raise KeystoreError(
                    f"no single PKCS#11 token labelled {self._token!r} in module {module!r}"
                ) from None
            session = self._login(p11, token)
            try:
                yield session
            finally:
                session.close()

    def _login(self, p11: ModuleType, token: Any) -> Session:
        try:
            session: Session = token.open(rw=True, user_pin=self._config.pin.unsafe_key())
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
            raise KeystoreError(
                f"the user PIN for PKCS#11 token {self._token!r} was refused ({PIN_ENV})"
            ) from None
        except p11.PKCS11Error as exc:
            raise KeystoreError(
                f"could not log in to PKCS#11 token {self._token!r} ({_why(exc)})"
            ) from None
        return session

    def _generate(self) -> None:
        p11 = _pkcs11()
        attribute = p11.Attribute
        template = {
            attribute.TOKEN: True,
            attribute.PRIVATE: True,
            attribute.SENSITIVE: True,
            attribute.EXTRACTABLE: False,
            attribute.ENCRYPT: True,
            attribute.DECRYPT: True,
            attribute.WRAP: False,
            attribute.UNWRAP: False,
            attribute.SIGN: False,
            attribute.VERIFY: False,
            attribute.DERIVE: False,
        }
        with self._session() as session:
            try:
                session.generate_key(
                    p11.KeyType.AES,
                    256,
                    id=self._id,
                    label=self._label,
                    store=True,
                    template=template,
                )
            except p11.PKCS11Error as exc:
                raise KeystoreError(
                    f"could not generate the keystore KEK on token {self._token!r} ({_why(exc)})"
                ) from None

    def _key(self, session: Session) -> _AESKey:
        """The named key, refused unless it is an AES-256 secret key that never left the token."""
        p11 = _pkcs11()
        attribute = p11.Attribute
        try:
            key = cast(
                "_AESKey",
                session.get_key(
                    object_class=p11.ObjectClass.SECRET_KEY, label=self._label, id=self._id
                ),
            )
            facts = {
                name: key[getattr(attribute, name)]
                for name in (
                    "KEY_TYPE",
                    "VALUE_LEN",
                    "EXTRACTABLE",
                    "NEVER_EXTRACTABLE",
                    "SENSITIVE",
                )
            }
        except p11.NoSuchKey:
            raise KeystoreError(
                f"{self._where()} does not exist (or the PIN cannot see it)"
            ) from None
        except p11.MultipleObjectsReturned:
            raise KeystoreError(
                f"{self._where()} is ambiguous: more than one key matches"
            ) from None
        except p11.PKCS11Error as exc:
            raise KeystoreError(f"{self._where()} could not be inspected ({_why(exc)})") from None
        # A key that is, or ever was, extractable may have a copy outside the token, which is
        # exactly what this protection promises against; refuse it rather than use it.
        if facts["EXTRACTABLE"] or not facts["NEVER_EXTRACTABLE"]:
            raise KeystoreError(f"refusing {self._where()}: it is or was extractable")
        if not facts["SENSITIVE"]:
            raise KeystoreError(f"refusing {self._where()}: it is not sensitive")
        if facts["KEY_TYPE"] != p11.KeyType.AES or facts["VALUE_LEN"] != 32:
            raise KeystoreError(f"refusing {self._where()}: it is not an AES-256 key")
        return key
