"""Which log fields are personal, and sealing them under their data subject's key.

A deployment marks what is personal in ``personal-data.json`` in the core's state directory::

    {"callers": true, "parameters": ["patient_id", "postcode"]}

``callers``: the caller's token id in access entries and in receipts (``qward_caller``).
``parameters``: request parameters whose values go into receipts sealed. A request names its data
subject with the parameter ``qward_subject`` (never logged: it only selects the key); without it,
the subject is the caller. Without the file nothing is sealed, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qward.crypto.erasable import (
    ACCESS_CONTEXT,
    ERASED,
    is_sealed_field,
    open_field,
    parameter_context,
    seal_field,
    sealed_key_id,
)
from qward.encoding import read_limited
from qward.errors import InputError
from qward.protected.subjects import SubjectKeys

__all__ = ["PERSONAL_DATA_FILE", "SUBJECT_PARAMETER", "PersonalData", "PersonalDataPolicy"]

PERSONAL_DATA_FILE = "personal-data.json"
SUBJECT_PARAMETER = "qward_subject"
_CALLER_PARAMETER = "qward_caller"


@dataclass(frozen=True, kw_only=True)
class PersonalDataPolicy:
    """What a deployment declared personal."""

    callers: bool = False
    parameters: frozenset[str] = frozenset()

    @classmethod
    def load(cls, state_dir: Path) -> PersonalDataPolicy | None:
        """The policy in ``state_dir``, or ``None`` when the deployment declared none."""
        path = state_dir / PERSONAL_DATA_FILE
        if not path.exists():
            return None
        try:
            doc = json.loads(read_limited(str(path), limit=64 * 1024, what=PERSONAL_DATA_FILE))
        except ValueError:
            raise InputError(f"{path} is not valid JSON") from None
        if not isinstance(doc, dict) or set(doc) - {"callers", "parameters"}:
            raise InputError(f"{path}: expected an object with callers and parameters only")
        callers, names = doc.get("callers", False), doc.get("parameters", [])
        if not isinstance(callers, bool):
            raise InputError(f"{path}: callers must be true or false")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise InputError(f"{path}: parameters must be a list of parameter names")
        if SUBJECT_PARAMETER in names:
            raise InputError(f"{path}: {SUBJECT_PARAMETER} is never logged, so it is not listed")
        return cls(callers=callers, parameters=frozenset(names))


class PersonalData:
    """Seals personal fields on the way into the log, and opens them for the core's readers."""

    def __init__(self, policy: PersonalDataPolicy, keys: SubjectKeys) -> None:
        self._policy = policy
        self.keys = keys

    def seal_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """``parameters`` as a receipt records them: personal values sealed, the subject gone."""
        out = dict(parameters)
        subject = out.pop(SUBJECT_PARAMETER, None)
        caller = out.get(_CALLER_PARAMETER)
        names = set(self._policy.parameters) | (
            {_CALLER_PARAMETER} if self._policy.callers else set()
        )
        present = sorted(n for n in names if out.get(n) is not None)
        if not present:
            return out
        subject = subject if subject is not None else caller
        if not isinstance(subject, str) or not subject:
            raise InputError(
                f"personal parameters ({', '.join(present)}) need a data subject: "
                f"the {SUBJECT_PARAMETER} parameter or an authenticated caller"
            )
        key_id, key = self.keys.key_for(subject)
        for name in present:
            out[name] = seal_field(
                out[name], key=key, key_id=key_id, context=parameter_context(name)
            )
        return out

    def seal_caller(self, token_id: str | None) -> str | dict[str, Any] | None:
        """An access entry's token id, sealed under the caller's key when callers are personal."""
        if token_id is None or not self._policy.callers:
            return token_id
        key_id, key = self.keys.key_for(token_id)
        return seal_field(token_id, key=key, key_id=key_id, context=ACCESS_CONTEXT)

    def reveal(self, value: object, context: str) -> Any:
        """A sealed value's plaintext, or ``ERASED`` once its subject's key is gone."""
        if not is_sealed_field(value):
            return value
        key = self.keys.get(sealed_key_id(value))
        if key is None:
            return ERASED
        return open_field(value, key=key, context=context)
