"""Key handles: private keys that refuse to be printed, pickled or copied."""

from __future__ import annotations

from typing import Any, Generic, NoReturn, TypeVar

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

__all__ = ["HPKEPrivateKey", "KeyHandle"]

K = TypeVar("K")

#: The private key objects HPKE opens with, one per KEM suite of ``qward.suites``.
HPKEPrivateKey = (
    hpke.MLKEM768X25519PrivateKey
    | x25519.X25519PrivateKey
    | mlkem.MLKEM768PrivateKey
    | mlkem.MLKEM1024PrivateKey
)


class KeyHandle(Generic[K]):
    """Holds a private key object under a purpose and key id.

    ``repr`` shows only the purpose and id; pickling and copying raise, so a key cannot leave the
    process by accident through logging, multiprocessing or an error report.
    """

    __slots__ = ("_key", "key_id", "purpose")

    def __init__(self, *, purpose: str, key_id: str, key: K) -> None:
        self.purpose = purpose
        self.key_id = key_id
        self._key = key

    def unsafe_key(self) -> K:
        """The wrapped key object; for use inside ``qward.protected`` only."""
        return self._key

    def __repr__(self) -> str:
        return f"KeyHandle(purpose={self.purpose!r}, key_id={self.key_id!r}, key=<redacted>)"

    __str__ = __repr__

    def __getstate__(self) -> NoReturn:
        raise TypeError("key handles cannot be pickled")

    def __reduce__(self) -> NoReturn:
        raise TypeError("key handles cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("key handles cannot be copied")

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        raise TypeError("key handles cannot be copied")
