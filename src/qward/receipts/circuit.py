"""What a receipt binds about a hybrid quantum-classical run, and how a replay is held to it.

A circuit run's receipt carries ``runtime.circuit``, the ``qward/compiled-circuit/v1`` record the
worker produced: the SHA-256 of the canonical serialisation of the compiled tapes (native gates,
wires, every parameter exactly, measurements, shots), the simulator, shots, the device seed, the
number of executions and the digest of the trained weights. Input features are bound by the
receipt's input digest and appear again, exactly, as gate parameters inside the compiled circuit.
A replay must reproduce the same record, not only the same output bytes: outputs alone could
coincide (an analytic expectation value ignores the seed) while the circuit that ran did not.
"""

from __future__ import annotations

from typing import Any

from qward.errors import FormatError
from qward.runtime.circuit_spec import COMPILED_CIRCUIT_FORMAT, DEVICES, MAX_SHOTS

__all__ = ["check_circuit_record", "circuit_differences"]

_FIELDS = {"format", "sha256", "device", "shots", "seed", "executions", "weights_sha256"}
_HEX = set("0123456789abcdef")


def _digest(record: dict[str, Any], key: str) -> None:
    value = record.get(key)
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise FormatError(f"receipt body: runtime.circuit.{key} must be a SHA-256 hex digest")


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_circuit_record(record: object, *, seed: int) -> None:
    """Check a ``runtime.circuit`` record's fields and that it ran with the receipt's seed."""
    if not isinstance(record, dict) or set(record) != _FIELDS:
        raise FormatError(
            f"receipt body: runtime.circuit must hold exactly {', '.join(sorted(_FIELDS))}"
        )
    if record["format"] != COMPILED_CIRCUIT_FORMAT:
        raise FormatError(f"receipt body: runtime.circuit.format must be {COMPILED_CIRCUIT_FORMAT}")
    _digest(record, "sha256")
    _digest(record, "weights_sha256")
    if record["device"] not in DEVICES:
        raise FormatError(f"receipt body: runtime.circuit.device {record['device']!r} is unknown")
    shots = record["shots"]
    if shots is not None and not (_integer(shots) and 1 <= shots <= MAX_SHOTS):
        raise FormatError("receipt body: runtime.circuit.shots must be null or 1 to 100000")
    if not _integer(record["executions"]) or record["executions"] < 1:
        raise FormatError("receipt body: runtime.circuit.executions must be a positive integer")
    if record["seed"] != seed or not _integer(record["seed"]):
        raise FormatError("receipt body: runtime.circuit.seed differs from the receipt's seed")


def circuit_differences(recorded: dict[str, Any], replayed: object) -> list[str]:
    """The fields in which a replay's compiled-circuit record departs from the receipt's."""
    if not isinstance(replayed, dict):
        return ["the replay ran no circuit"]
    return sorted(k for k in _FIELDS if recorded.get(k) != replayed.get(k))
