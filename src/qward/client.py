"""The qward SDK: ``seal``, ``run``, ``verify``, ``replay``.

The SDK seals models and inputs on the caller's side with the core's public key (from a pinned
trust bundle), so plaintext never crosses the public service. Every receipt it returns has already
been verified offline against that trust bundle, and every output checked against the receipt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qward.core_protocol import CoreInterface, ModelInfo, ReplayResult
from qward.crypto.envelope import seal as _seal
from qward.errors import ReplayMismatchError, VerificationError
from qward.receipts.replay_verdict import BITWISE, WITHIN_TOLERANCE
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import VerifiedReceipt, Verifier
from qward.runtime.circuit_spec import CIRCUIT_CONTENT_TYPE, is_circuit_spec
from qward.tensors import Tensor, encode_tensors, tensors_digest

__all__ = [
    "CIRCUIT_CONTENT_TYPE",
    "INPUT_CONTENT_TYPE",
    "MODEL_CONTENT_TYPE",
    "Client",
    "VerifiedRun",
    "seal_input",
    "seal_model",
    "verify",
]

MODEL_CONTENT_TYPE = "application/onnx"
INPUT_CONTENT_TYPE = "application/vnd.qward.tensors"


def seal_model(model: bytes, *, trust: TrustBundle) -> bytes:
    """Seal a model to the core named in ``trust``: an ONNX graph, or a ``qward/circuit/v1``
    spec (canonical JSON), which is sealed as ``CIRCUIT_CONTENT_TYPE`` and validated by the core."""
    content_type = CIRCUIT_CONTENT_TYPE if is_circuit_spec(model) else MODEL_CONTENT_TYPE
    return _seal(model, recipient=trust.hpke_recipient, content_type=content_type)


def seal_input(tensors: Sequence[Tensor], *, trust: TrustBundle) -> bytes:
    """Seal a set of input tensors to the core named in ``trust``."""
    return _seal(
        encode_tensors(tensors), recipient=trust.hpke_recipient, content_type=INPUT_CONTENT_TYPE
    )


def verify(receipt: bytes, *, trust: TrustBundle) -> VerifiedReceipt:
    """Verify a receipt offline (signature, inclusion proof, checkpoint); raises on failure."""
    return Verifier(trust=trust).verify(receipt)


@dataclass(frozen=True, kw_only=True)
class VerifiedRun:
    """Outputs whose receipt verified and whose digests match it."""

    outputs: tuple[Tensor, ...]
    receipt: bytes
    verified: VerifiedReceipt

    @property
    def log_index(self) -> int:
        """Where the receipt sits in the transparency log."""
        return self.verified.bundle.index


class Client:
    """The SDK over any ``CoreInterface``, pinned to one ``TrustBundle``."""

    def __init__(self, core: CoreInterface, *, trust: TrustBundle) -> None:
        self._core = core
        self.trust = trust
        self._verifier = Verifier(trust=trust)

    def register(self, model: bytes, *, name: str) -> ModelInfo:
        """Seal ``model`` locally and register it with the core."""
        return self._core.register_model(seal_model(model, trust=self.trust), name=name)

    def run(
        self,
        model_sha256: str,
        inputs: Sequence[Tensor],
        *,
        seed: int,
        parameters: dict[str, Any] | None = None,
    ) -> VerifiedRun:
        """Run a model on sealed inputs; verify the receipt and that it matches what came back."""
        result = self._core.run(
            model_sha256,
            seal_input(inputs, trust=self.trust),
            seed=seed,
            parameters=parameters or {},
        )
        verified = self._verifier.verify(result.receipt)
        body = verified.body
        checks = {
            "model": model_sha256,
            "input": tensors_digest(inputs),
            "output": tensors_digest(result.outputs),
        }
        for section, digest in checks.items():
            if body[section]["sha256"] != digest:
                raise VerificationError(f"receipt's {section} digest does not match this run")
        if body["seed"] != seed:
            raise VerificationError("receipt records a different seed than requested")
        return VerifiedRun(outputs=result.outputs, receipt=result.receipt, verified=verified)

    def replay(
        self,
        receipt: bytes,
        inputs: Sequence[Tensor],
        *,
        original_outputs: Sequence[Tensor] | None = None,
    ) -> ReplayResult:
        """Replay a receipt. On the same platform and environment only bit-identical outputs
        pass; elsewhere, given the original outputs, the declared tolerance applies. Anything
        else raises ``ReplayMismatchError``."""
        verified = self._verifier.verify(receipt)
        if tensors_digest(inputs) != verified.body["input"]["sha256"]:
            raise VerificationError("these inputs are not the inputs the receipt records")
        result = self._core.replay(
            receipt,
            seal_input(inputs, trust=self.trust),
            tuple(original_outputs) if original_outputs is not None else None,
        )
        expected = verified.body["output"]["sha256"]
        if result.verdict == BITWISE and tensors_digest(result.outputs) == expected:
            return result
        if result.verdict == WITHIN_TOLERANCE and original_outputs is not None:
            return result
        raise ReplayMismatchError(
            f"replay verdict {result.verdict}: {result.detail} "
            f"(replay {result.output_sha256}, receipt {result.expected_sha256})"
        )
