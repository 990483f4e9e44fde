"""A model's own chat template (GGUF ``tokenizer.chat_template``), rendered in a Jinja sandbox.

The template is Jinja code that came with the model, so it is untrusted: it is compiled in
Jinja's ``ImmutableSandboxedEnvironment`` (no attribute access to internals, no mutation of the
values passed in), gets only the messages, the BOS/EOS texts and ``add_generation_prompt``, and its
output is capped. The template's SHA-256 goes into the generation record, so a receipt names the
exact formatting the prompt went through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import jinja2
import jinja2.sandbox

from qward.errors import InputError

__all__ = ["CHAT_ROLES", "MAX_RENDERED_CHARS", "ChatMessage", "ChatTemplate", "parse_messages"]

CHAT_ROLES = frozenset({"system", "user", "assistant"})
MAX_RENDERED_CHARS = 256 * 1024
_MAX_MESSAGES = 256


@dataclass(frozen=True, kw_only=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in CHAT_ROLES:
            raise InputError(f"message role must be one of {sorted(CHAT_ROLES)}")
        if not isinstance(self.content, str):
            raise InputError("message content must be a string")


def parse_messages(doc: object) -> tuple[ChatMessage, ...]:
    """Messages from ``[{"role": ..., "content": ...}, ...]``; nothing else is accepted."""
    if not isinstance(doc, list) or not 0 < len(doc) <= _MAX_MESSAGES:
        raise InputError(f"messages must be a list of 1 to {_MAX_MESSAGES} objects")
    out = []
    for item in doc:
        if not isinstance(item, dict) or set(item) != {"role", "content"}:
            raise InputError("each message must be an object with exactly role and content")
        out.append(ChatMessage(role=item["role"], content=item["content"]))
    return tuple(out)


class _TemplateRaisedError(Exception):
    pass


def _raise_exception(message: str) -> NoReturn:
    # Templates call raise_exception() to refuse a conversation they cannot format.
    raise _TemplateRaisedError(str(message)[:200])


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and the digest of its source text."""

    source: str
    sha256: str
    _template: Any

    @classmethod
    def from_text(cls, source: str) -> ChatTemplate:
        """Compile ``source`` in the sandbox; ``InputError`` if it is not valid Jinja."""
        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols"],
            autoescape=False,
        )
        environment.globals["raise_exception"] = _raise_exception
        try:
            template = environment.from_string(source)
        except jinja2.TemplateError as exc:
            raise InputError(f"the model's chat template does not compile: {exc}") from None
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        return cls(source, digest, template)

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        bos_token: str,
        eos_token: str,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text for ``messages``, ending with the assistant's turn opener."""
        try:
            text = self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
            )
        except _TemplateRaisedError as exc:
            raise InputError(f"the model's chat template refused the messages: {exc}") from None
        except (jinja2.TemplateError, TypeError, ValueError, RecursionError) as exc:
            raise InputError(f"the model's chat template failed: {type(exc).__name__}") from None
        if not isinstance(text, str) or len(text) > MAX_RENDERED_CHARS:
            raise InputError("the rendered chat prompt is over the size limit")
        return text
