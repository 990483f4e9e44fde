"""The worker's side of GGUF text generation: the load step and the ``generate`` and
``replay_generation`` frames.

Imported by the worker only once a GGUF model arrives, and only after the sandbox is in place
(llama.cpp and Jinja are read from site-packages, which Landlock leaves readable). Requests and
replies are canonical JSON in the frame payload; reals are ``float.hex()`` text.

A ``generate`` payload is ``{"mode": "completion", "prompt": str}``,
``{"mode": "chat", "messages": [{"role", "content"}, ...]}`` or
``{"mode": ..., "prompt_token_ids": [...]}`` (exact ids, as a replay needs), plus
``"parameters"`` (``SamplingParameters.from_record``); the seed travels in the frame header. The
reply payload is the ``Generation.record()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qward.encoding import canonical_json, parse_canonical_json
from qward.errors import InputError
from qward.runtime.llm import GGUFEngine, TokenEvent, TokenReplayMismatchError
from qward.runtime.llm_profile import SamplingParameters
from qward.runtime.llm_template import parse_messages

__all__ = ["GGUFWorkerModel", "open_gguf"]

_MAX_REQUEST_BYTES = 1024 * 1024


class GGUFWorkerModel:
    """A loaded GGUF model as the worker's run loop sees it."""

    def __init__(self, engine: GGUFEngine) -> None:
        self.engine = engine
        # Text in, text out: no tensors to describe.
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []

    def warm_up(self) -> None:
        """Run llama.cpp once so its lazy set-up happens before the seccomp allowlist."""
        self.engine.warm_up()

    def profile(self) -> dict[str, Any]:
        """What the load reply records as the session profile."""
        return self.engine.profile

    def versions(self) -> dict[str, str]:
        """Library versions the load reply adds (read at load, before the allowlist)."""
        return dict(self.engine.profile["versions"])

    def generate(
        self,
        payload: bytes,
        seed: int,
        on_token: Callable[[TokenEvent], bool | None] | None = None,
    ) -> bytes:
        """Answer one ``generate`` frame; the reply payload is the generation record.
        ``on_token`` sees each token as it is sampled (for streaming)."""
        request = _request(payload)
        parameters = SamplingParameters.from_record(request.get("parameters", {}))
        mode = request.get("mode")
        if "prompt_token_ids" in request:
            prompt = request["prompt_token_ids"]
            if not isinstance(prompt, list):
                raise InputError("prompt_token_ids must be a list of token ids")
        elif mode == "chat":
            prompt = list(self.engine.chat_prompt(parse_messages(request.get("messages"))))
        elif mode == "completion" and isinstance(request.get("prompt"), str):
            prompt = list(self.engine.completion_prompt(request["prompt"]))
        else:
            raise InputError("a generate request needs a completion prompt or chat messages")
        result = self.engine.generate(
            prompt, parameters, seed=seed, mode=str(mode), on_token=on_token
        )
        return canonical_json(result.record())

    def replay(self, payload: bytes) -> bytes:
        """Answer one ``replay_generation`` frame: ``{"generation": <new record>, "divergence":
        null | {"index", "expected", "actual"}}``."""
        record = _request(payload)
        try:
            replayed = self.engine.replay(record)
        except TokenReplayMismatchError as exc:
            d = exc.divergence
            divergence = {"index": d.index, "expected": d.expected, "actual": d.actual}
            return canonical_json({"generation": exc.replayed.record(), "divergence": divergence})
        return canonical_json({"generation": replayed.record(), "divergence": None})


def _request(payload: bytes) -> dict[str, Any]:
    if len(payload) > _MAX_REQUEST_BYTES:
        raise InputError("the generation request is over the size limit")
    return parse_canonical_json(payload, what="generation request")


def open_gguf(model_fd: int, *, chat_template: str | None) -> GGUFWorkerModel:
    """Open the sealed memfd ``model_fd`` in the deterministic profile."""
    return GGUFWorkerModel(GGUFEngine.open(model_fd, chat_template=chat_template))
