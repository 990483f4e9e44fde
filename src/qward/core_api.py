"""The one doorway between the public process and the protected core: what may be asked of it.

``CoreInterface`` is what public code may ask of the core; ``qward.sdk.core_client.CoreClient``
implements it over the core's Unix socket with ``qward.framing`` frames. Requests are
``{"op": ...}`` headers with an optional binary payload; replies are ``{"ok": true, ...}`` or
``{"ok": false, "code", "message"}``, and an error code maps back to the same ``QwardError``
subclass the core raised. Nothing here ever carries a private key, and only sealed models and
inputs travel toward the core.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from qward import errors
from qward.errors import QwardError
from qward.receipts.trust import TrustBundle
from qward.tensors import Tensor

__all__ = [
    "MAX_FRAME_PAYLOAD",
    "AccessRecord",
    "CoreInterface",
    "GenerationReplay",
    "GenerationResult",
    "ModelInfo",
    "ReplayResult",
    "RunResult",
    "TokenChunk",
    "error_from_reply",
]

MAX_FRAME_PAYLOAD = 1024 * 1024 * 1024

_ERRORS: dict[str, type[QwardError]] = {
    cls.code: cls
    for name in errors.__all__
    if isinstance(cls := getattr(errors, name), type)
    and issubclass(cls, QwardError)
    and cls is not errors.LogInconsistencyError
}


def error_from_reply(header: dict[str, Any]) -> QwardError:
    """Rebuild the error the core reported."""
    cls = _ERRORS.get(str(header.get("code")), QwardError)
    return cls(str(header.get("message", "the core reported an error")))


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """A model the core holds: its digest, signature and the isolation its worker achieved."""

    model_sha256: str
    name: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    isolation: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class AccessRecord:
    """The public server's record of one API call and its access decision (a token id, never
    the token). Sent with a run, the core logs it in the run's first transaction."""

    token_id: str | None
    role: str | None
    method: str
    path: str
    decision: str

    def to_header(self) -> dict[str, str | None]:
        """The fields as the core's ``record_access`` and ``run`` operations take them."""
        return {
            "token_id": self.token_id,
            "role": self.role,
            "method": self.method,
            "path": self.path,
            "decision": self.decision,
        }


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """Outputs of one attested run and the receipt bundle bytes."""

    outputs: tuple[Tensor, ...]
    receipt: bytes
    receipt_id: str
    log_index: int


@dataclass(frozen=True, kw_only=True)
class TokenChunk:
    """One generated token as it is streamed: its index, id and the text it releases (text is
    held back while it could begin a stop string)."""

    index: int
    token_id: int
    text: str


@dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """A finished text generation: the ``qward/generation/v1`` record (prompt and generated
    token ids, text, finish reason, sampling parameters, seed) and the receipt bundle bytes."""

    record: dict[str, Any]
    receipt: bytes
    receipt_id: str
    log_index: int


@dataclass(frozen=True, kw_only=True)
class GenerationReplay:
    """The verdict of regenerating a receipted generation: token ids compare exactly; a
    mismatch's ``detail`` names the first divergent token when the original ids were given."""

    verdict: str
    detail: str
    output_sha256: str
    expected_sha256: str
    record: dict[str, Any]
    log_index: int
    #: The logged verdict with its inclusion proof and checkpoint (a replay-verdict document).
    verdict_document: bytes = b""


@dataclass(frozen=True, kw_only=True)
class ReplayResult:
    """The verdict of a replay: bitwise-identical, within-tolerance or mismatch."""

    verdict: str
    output_sha256: str
    expected_sha256: str
    outputs: tuple[Tensor, ...]
    same_environment: bool = True
    detail: str = ""
    #: The verdict's log index and its replay-verdict document (entry, proof, checkpoint).
    log_index: int = -1
    verdict_document: bytes = b""


class CoreInterface(Protocol):
    """What the public surface may ask of the protected core."""

    def trust(self) -> TrustBundle: ...
    def attest(self, nonce: bytes) -> bytes: ...
    def register_model(
        self, sealed_model: bytes, *, name: str, chat_template: str | None = None
    ) -> ModelInfo: ...
    def run(
        self,
        model_sha256: str,
        sealed_input: bytes,
        *,
        seed: int,
        parameters: dict[str, Any],
        by_name: bool = False,
        access: AccessRecord | None = None,
    ) -> RunResult: ...
    def generate(
        self, model: str, sealed_request: bytes, *, seed: int, by_name: bool = False
    ) -> GenerationResult: ...
    def generate_stream(
        self, model: str, sealed_request: bytes, *, seed: int, by_name: bool = False
    ) -> Iterator[TokenChunk | GenerationResult]: ...
    def replay_generation(
        self,
        receipt: bytes,
        sealed_request: bytes,
        original_token_ids: list[int] | None = None,
        issuer_trust: bytes | None = None,
    ) -> GenerationReplay: ...
    def replay(
        self,
        receipt: bytes,
        sealed_input: bytes,
        original_outputs: tuple[Tensor, ...] | None = None,
        issuer_trust: bytes | None = None,
    ) -> ReplayResult: ...
    def checkpoint(self) -> bytes: ...
    def models(self) -> list[dict[str, Any]]: ...
    def unload_model(self, model_sha256: str, *, reload: bool = False) -> None: ...
    def record_access(
        self, *, token_id: str | None, role: str | None, method: str, path: str, decision: str
    ) -> None: ...
    def tile(self, path: str) -> bytes: ...
    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, ...]: ...
    def consistency_proof(self, old_size: int, new_size: int) -> tuple[bytes, ...]: ...
