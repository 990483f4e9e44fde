"""GGUF text generation on llama.cpp: deterministic, streamable and replayable token by token.

Only the worker imports this module (llama.cpp is large and optional). The model arrives as a
sealed memfd (``qward.runtime.memfd``) and is opened as ``/proc/self/fd/N``. Every request:

1. clears the KV cache, so nothing of an earlier request is reused;
2. evaluates the prompt in fixed ``N_BATCH``-token chunks, then one token per step, on one thread
   (``qward.runtime.llm_profile`` says why each setting is fixed);
3. samples with a fresh llama.cpp sampler chain seeded from the request (greedy when
   ``temperature`` is 0), so the token ids depend only on model, prompt ids, parameters and seed;
4. stops at an end-of-generation token, a stop string, ``max_tokens`` or the caller's cut-off,
   and returns the exact prompt and generated token ids, which a replay compares one by one.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp

from qward.errors import InputError, ReplayMismatchError, RuntimeFailure
from qward.runtime.llm_profile import (
    GENERATION_FORMAT,
    N_BATCH,
    N_CTX,
    N_THREADS,
    N_THREADS_BATCH,
    N_UBATCH,
    SamplingParameters,
    TokenDivergence,
    engine_settings,
    first_divergence,
    sampler_seed,
)
from qward.runtime.llm_template import ChatMessage, ChatTemplate
from qward.runtime.memfd import memfd_path

__all__ = [
    "FINISH_REASONS",
    "GGUFEngine",
    "Generation",
    "GenerationStream",
    "TokenEvent",
    "TokenReplayMismatchError",
    "llm_versions",
]

FINISH_REASONS = ("stop", "length", "cancelled")
_MODES = ("completion", "chat")
_MAX_PROMPT_CHARS = 256 * 1024
_LOAD_MODE_MMAP = 1  # LLAMA_LOAD_MODE_MMAP: the sealed memfd is mapped read-only, not copied
# llama.cpp logs every tensor while loading; only errors reach the worker's stderr.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
_backend_ready = threading.Lock()
_backend_initialised: list[bool] = []


def llm_versions() -> dict[str, str]:
    """Versions of what computes a generation: the bindings, llama.cpp and ggml (with commit)."""
    ggml = llama_cpp.llama_cpp._lib  # ggml's version symbols are exported but not bound
    # The package's own constant: reading dist-info would need a file the sandbox may hide.
    versions = {"llama-cpp-python": str(llama_cpp.__version__)}
    versions["llama.cpp"] = llama_cpp.llama_version().decode("ascii", "replace")
    for name in ("ggml_version", "ggml_commit"):
        function = getattr(ggml, name, None)
        if function is not None:
            function.restype = ctypes.c_char_p
            versions[name.replace("_", ".", 1)] = function().decode("ascii", "replace")
    return versions


class TokenReplayMismatchError(ReplayMismatchError):
    """A replay sampled different token ids; ``divergence`` names the first differing index and
    ``replayed`` is the new generation, kept as evidence."""

    def __init__(self, divergence: TokenDivergence, replayed: Generation) -> None:
        super().__init__(f"replay diverged at {divergence.describe()}")
        self.divergence = divergence
        self.replayed = replayed


@dataclass(frozen=True, kw_only=True)
class TokenEvent:
    """One sampled token. ``text`` is the text it releases: held back while it might begin a stop
    string or an unfinished UTF-8 character, so streamed text never shows a stop string."""

    index: int
    token_id: int
    text: str


@dataclass(frozen=True, kw_only=True)
class Generation:
    """What a request produced. ``token_ids`` are every sampled token, the end-of-generation
    token or the tokens that completed a stop string included; ``text`` ends before either."""

    mode: str
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    matched_stop: str | None
    seed: int
    parameters: SamplingParameters
    chat_template_sha256: str | None

    def record(self) -> dict[str, Any]:
        """The canonical-JSON record a receipt binds and a replay starts from."""
        return {
            "format": GENERATION_FORMAT,
            "mode": self.mode,
            "prompt_token_ids": list(self.prompt_token_ids),
            "token_ids": list(self.token_ids),
            "text": self.text,
            "finish_reason": self.finish_reason,
            "matched_stop": self.matched_stop,
            "seed": self.seed,
            "sampler_seed": sampler_seed(self.seed),
            "parameters": self.parameters.record(),
            "chat_template_sha256": self.chat_template_sha256,
        }


def _token_list(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in value
    ):
        raise InputError(f"{what} must be a list of token ids")
    return tuple(value)


def _stop_holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could still be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class _TextTracker:
    """Decodes pieces incrementally and finds stop strings in the decoded text."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.released = 0
        self.matched: str | None = None

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text now safe to release."""
        start = max(0, len(self.text) - max((len(s) for s in self._stops), default=0))
        self.text += self._decoder.decode(piece)
        hits = [(self.text.find(s, start), s) for s in self._stops]
        found = sorted((at, s) for at, s in hits if at >= 0)
        if found:
            self.text, self.matched = self.text[: found[0][0]], found[0][1]
            return self._release(len(self.text))
        return self._release(len(self.text) - _stop_holdback(self.text, self._stops))

    def finish(self) -> str:
        """Flush what the decoder and the stop hold-back kept; return it."""
        if self.matched is None:
            self.text += self._decoder.decode(b"", final=True)
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        out = self.text[self.released : max(upto, self.released)]
        self.released = max(upto, self.released)
        return out


class GenerationStream:
    """An iterator of ``TokenEvent``s for one request; ``result()`` gives the ``Generation``.

    Stopping early (leaving the loop, ``cancel()``, or ``result()`` before the end) ends the
    request with ``finish_reason == "cancelled"`` and keeps every token produced so far.
    """

    def __init__(
        self, engine: GGUFEngine, steps: Generator[TokenEvent, None, None], make: Any
    ) -> None:
        self._engine = engine
        self._steps = steps
        self._make = make
        self._result: Generation | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> TokenEvent:
        if self._result is not None:
            raise StopIteration
        try:
            return next(self._steps)
        except StopIteration:
            self._result = self._make(None)
            self._engine._release()
            raise
        except BaseException:
            # A failed decode ends the request; the engine must not stay marked busy.
            self._result = self._make("cancelled")
            self._engine._release()
            raise

    def cancel(self) -> None:
        """Stop generating; the result keeps what was produced."""
        if self._result is None:
            self._steps.close()
            self._result = self._make("cancelled")
            self._engine._release()

    def result(self) -> Generation:
        """The finished (or, if still running, now cancelled) generation."""
        self.cancel()
        assert self._result is not None
        return self._result


class GGUFEngine:
    """One llama.cpp model and context in the deterministic profile; one request at a time."""

    def __init__(
        self, model: Any, context: Any, template: ChatTemplate | None, template_source: str | None
    ) -> None:
        self._model = model
        self._context = context
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._template = template
        self._template_source = template_source
        self._busy = threading.Lock()
        self._profile = self._describe()

    @classmethod
    def open(cls, model_fd: int, *, chat_template: str | None = None) -> GGUFEngine:
        """Load the GGUF in the sealed memfd ``model_fd`` (``qward.runtime.memfd``).

        Chat uses the GGUF's own ``tokenizer.chat_template``, or ``chat_template`` (Jinja text the
        operator registered with the model) when given; the profile records which, and its
        SHA-256. A model with neither has no chat: qward never guesses a format (a guessed
        format makes a model answer nothing or nonsense).
        """
        path = memfd_path(model_fd).encode("ascii")
        override = ChatTemplate.from_text(chat_template) if chat_template is not None else None
        with _backend_ready:
            if not _backend_initialised:
                llama_cpp.llama_backend_init()
                _backend_initialised.append(True)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        params.load_mode = _LOAD_MODE_MMAP
        model = llama_cpp.llama_model_load_from_file(path, params)
        if not model:
            raise InputError("the GGUF model does not load in llama.cpp")
        context = llama_cpp.llama_init_from_model(model, _context_params())
        if not context:
            llama_cpp.llama_model_free(model)
            raise RuntimeFailure("llama.cpp could not create a context for the model")
        if override is not None:
            return cls(model, context, override, "operator")
        own = _chat_template(model)
        return cls(model, context, own, "gguf" if own else None)

    @property
    def profile(self) -> dict[str, Any]:
        """The engine, versions, build, fixed settings and model facts a receipt records."""
        return dict(self._profile)

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The model's own chat template, if its GGUF carries one."""
        return self._template

    def _describe(self) -> dict[str, Any]:
        system = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
        description = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self._model, description, len(description))
        return {
            "engine": "llama.cpp",
            "versions": llm_versions(),
            "system_info": system,
            "build_features": _features(system),
            "settings": engine_settings(),
            "model": {
                "description": description.value.decode("utf-8", "replace"),
                "n_params": int(llama_cpp.llama_model_n_params(self._model)),
                "n_vocab": int(llama_cpp.llama_vocab_n_tokens(self._vocab)),
            },
            "chat_template": {
                "source": self._template_source,
                "sha256": self._template.sha256 if self._template else None,
            },
            "sampler_chain": "penalties, top_k, top_p, min_p, temp, dist(seed) | greedy",
        }

    # Tokens and text.

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Token ids for ``text``; ``parse_special`` lets control-token text become control
        tokens (only for text qward rendered itself, never for raw user text)."""
        if len(text) > _MAX_PROMPT_CHARS:
            raise InputError(f"the prompt is over {_MAX_PROMPT_CHARS} characters")
        data = text.encode("utf-8")
        size = len(data) + 2
        for _ in range(2):
            buffer = (llama_cpp.llama_token * size)()
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buffer, size, add_special, parse_special
            )
            if count >= 0:
                return list(buffer[:count])
            size = -count
        raise RuntimeFailure("llama.cpp could not tokenize the prompt")

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (control tokens are empty unless ``special``)."""
        buffer = ctypes.create_string_buffer(128)
        count = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 128, 0, special)
        if count < 0:
            buffer = ctypes.create_string_buffer(-count)
            count = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -count, 0, special)
        return buffer.raw[: max(count, 0)]

    def completion_prompt(self, prompt: str) -> tuple[int, ...]:
        """Token ids for plain completion: BOS if the model wants one, then the text, with any
        control-token text in it kept as plain text."""
        return tuple(self.tokenize(prompt, add_special=True, parse_special=False))

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> tuple[int, ...]:
        """Token ids for a chat, formatted by the model's own template.

        A message whose text would tokenize into control tokens (``<start_of_turn>`` and the
        like) is refused: it could forge a turn of another role.
        """
        if self._template is None:
            raise InputError(
                "the model has no chat template (its GGUF carries no tokenizer.chat_template and "
                "none was registered with it); use plain completion"
            )
        for message in messages:
            literal = self.tokenize(message.content, add_special=False, parse_special=False)
            if self.tokenize(message.content, add_special=False, parse_special=True) != literal:
                raise InputError(f"a {message.role} message contains control-token text")
        text = self._template.render(
            messages,
            bos_token=self.piece(llama_cpp.llama_vocab_bos(self._vocab), special=True).decode(),
            eos_token=self.piece(llama_cpp.llama_vocab_eos(self._vocab), special=True).decode(),
        )
        # The template writes the BOS text itself, so the tokenizer must not add a second one.
        return tuple(self.tokenize(text, add_special=False, parse_special=True))

    # Generation.

    def stream(
        self,
        prompt_token_ids: Sequence[int],
        parameters: SamplingParameters,
        *,
        seed: int,
        mode: str = "completion",
    ) -> GenerationStream:
        """Start a request; iterate the result for tokens as they are sampled."""
        prompt = self._check_prompt(prompt_token_ids, parameters, mode)
        if not self._busy.acquire(blocking=False):
            raise RuntimeFailure("the engine is already generating")
        produced: list[int] = []
        tracker = _TextTracker(parameters.stop)
        outcome: dict[str, str] = {}

        def make(override: str | None) -> Generation:
            tracker.finish()
            return Generation(
                mode=mode,
                prompt_token_ids=prompt,
                token_ids=tuple(produced),
                text=tracker.text,
                finish_reason=override or outcome.get("finish", "cancelled"),
                matched_stop=tracker.matched,
                seed=seed,
                parameters=parameters,
                chat_template_sha256=self._template.sha256
                if mode == "chat" and self._template
                else None,
            )

        steps = self._steps(prompt, parameters, seed, produced, tracker, outcome)
        return GenerationStream(self, steps, make)

    def _release(self) -> None:
        self._busy.release()

    def _check_prompt(
        self, ids: Sequence[int], parameters: SamplingParameters, mode: str
    ) -> tuple[int, ...]:
        if mode not in _MODES:
            raise InputError(f"mode must be one of {_MODES}")
        prompt = _token_list(list(ids), "prompt_token_ids")
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        if not prompt or any(t >= n_vocab for t in prompt):
            raise InputError("the prompt is empty or names a token outside the vocabulary")
        if len(prompt) + parameters.max_tokens > N_CTX:
            raise InputError(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({parameters.max_tokens}) is "
                f"over the context of {N_CTX} tokens"
            )
        return prompt

    def _steps(
        self,
        prompt: tuple[int, ...],
        parameters: SamplingParameters,
        seed: int,
        produced: list[int],
        tracker: _TextTracker,
        outcome: dict[str, str],
    ) -> Generator[TokenEvent, None, None]:
        sampler = _sampler_chain(self._vocab, parameters, seed)
        try:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._context), True)
            for start in range(0, len(prompt), N_BATCH):
                self._decode(prompt[start : start + N_BATCH])
            for token in prompt:
                llama_cpp.llama_sampler_accept(sampler, token)
            while True:
                token = int(llama_cpp.llama_sampler_sample(sampler, self._context, -1))
                produced.append(token)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    outcome["finish"] = "stop"
                    return
                released = tracker.feed(self.piece(token))
                if tracker.matched is not None:
                    outcome["finish"] = "stop"
                elif len(produced) >= parameters.max_tokens:
                    outcome["finish"] = "length"
                if outcome:
                    yield TokenEvent(index=len(produced) - 1, token_id=token, text=released)
                    return
                yield TokenEvent(index=len(produced) - 1, token_id=token, text=released)
                self._decode((token,))
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def _decode(self, tokens: Sequence[int]) -> None:
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        status = llama_cpp.llama_decode(
            self._context, llama_cpp.llama_batch_get_one(array, len(tokens))
        )
        if status != 0:
            raise RuntimeFailure(f"llama.cpp failed to decode (status {status})")

    def generate(
        self,
        prompt_token_ids: Sequence[int],
        parameters: SamplingParameters,
        *,
        seed: int,
        mode: str = "completion",
        on_token: Callable[[TokenEvent], bool | None] | None = None,
    ) -> Generation:
        """Run a request to its end; ``on_token`` sees each token and may return ``False`` to
        cut the request off (the result then keeps what was produced)."""
        stream = self.stream(prompt_token_ids, parameters, seed=seed, mode=mode)
        for event in stream:
            if on_token is not None and on_token(event) is False:
                break
        return stream.result()

    def complete(
        self,
        prompt: str,
        parameters: SamplingParameters,
        *,
        seed: int,
        on_token: Callable[[TokenEvent], bool | None] | None = None,
    ) -> Generation:
        """Plain text completion of ``prompt``."""
        ids = self.completion_prompt(prompt)
        return self.generate(ids, parameters, seed=seed, mode="completion", on_token=on_token)

    def chat(
        self,
        messages: Sequence[ChatMessage],
        parameters: SamplingParameters,
        *,
        seed: int,
        on_token: Callable[[TokenEvent], bool | None] | None = None,
    ) -> Generation:
        """The assistant's next turn, the conversation formatted by the model's own template."""
        ids = self.chat_prompt(messages)
        return self.generate(ids, parameters, seed=seed, mode="chat", on_token=on_token)

    def replay(self, record: dict[str, Any]) -> Generation:
        """Regenerate a ``Generation.record()`` and compare token ids one by one.

        Returns the new generation when every token matches; raises
        ``TokenReplayMismatchError`` naming the first differing index otherwise. A cut-off
        original is replayed for as many tokens as it produced.
        """
        if not isinstance(record, dict) or record.get("format") != GENERATION_FORMAT:
            raise InputError(f"a replay needs a {GENERATION_FORMAT} record")
        expected = list(_token_list(record.get("token_ids"), "token_ids"))
        template = record.get("chat_template_sha256")
        if template is not None and (self._template is None or template != self._template.sha256):
            raise ReplayMismatchError("the record's chat template is not this model's")
        parameters = SamplingParameters.from_record(record.get("parameters"))
        seed = record.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError("the record's seed must be an integer")
        stream = self.stream(
            _token_list(record.get("prompt_token_ids"), "prompt_token_ids"),
            parameters,
            seed=seed,
            mode=str(record.get("mode")),
        )
        limit = len(expected) if record.get("finish_reason") == "cancelled" else None
        for event in stream:
            if limit is not None and event.index + 1 >= limit:
                break
        replayed = stream.result()
        divergence = first_divergence(expected, list(replayed.token_ids))
        if divergence is not None:
            raise TokenReplayMismatchError(divergence, replayed)
        return replayed

    def warm_up(self) -> None:
        """Exercise prompt batches, single-token decoding and both sampler kinds once, so every
        lazy allocation and system call happens before the seccomp allowlist."""
        # Longer than one micro-batch, so both the batched and the single-token paths run.
        filler = self.tokenize(" warm up" * N_UBATCH, add_special=False, parse_special=False)
        prompt = [llama_cpp.llama_vocab_bos(self._vocab), *filler[: N_UBATCH + 8]]
        for temperature in (0.0, 1.0):
            parameters = SamplingParameters(temperature=temperature, max_tokens=2)
            self.generate(prompt, parameters, seed=0)

    def close(self) -> None:
        """Free the context and the model."""
        if self._context:
            llama_cpp.llama_free(self._context)
            self._context = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None


def _context_params() -> Any:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = N_CTX
    params.n_batch = N_BATCH
    params.n_ubatch = N_UBATCH
    params.n_seq_max = 1
    params.n_threads = N_THREADS
    params.n_threads_batch = N_THREADS_BATCH
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.offload_kqv = False
    params.op_offload = False
    params.embeddings = False
    params.no_perf = True
    return params


def _chat_template(model: Any) -> ChatTemplate | None:
    text = llama_cpp.llama_model_chat_template(model, None)
    if not text:
        return None
    return ChatTemplate.from_text(text.decode("utf-8", "replace"))


def _features(system_info: str) -> dict[str, str]:
    # "CPU : SSE3 = 1 | AVX2 = 1 | ... |": the kernels the build selects on this CPU.
    features = {}
    for part in system_info.replace("CPU :", "|").split("|"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            features[name.strip()] = value.strip()
    return features


def _sampler_chain(vocab: Any, parameters: SamplingParameters, seed: int) -> Any:
    chain_params = llama_cpp.llama_sampler_chain_default_params()
    chain_params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(chain_params)
    add = llama_cpp.llama_sampler_chain_add
    if parameters.repeat_penalty != 1.0:
        penalty = parameters.repeat_penalty
        add(chain, llama_cpp.llama_sampler_init_penalties(parameters.repeat_last_n, penalty, 0, 0))
    if parameters.greedy:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if parameters.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(parameters.top_k))
    add(chain, llama_cpp.llama_sampler_init_top_p(parameters.top_p, 1))
    add(chain, llama_cpp.llama_sampler_init_min_p(parameters.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(parameters.temperature))
    add(chain, llama_cpp.llama_sampler_init_dist(sampler_seed(seed)))
    return chain
