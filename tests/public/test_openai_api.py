"""The official `openai` client, unchanged, against `qward serve --example-llm`.

One server for the module (registering Gemma 3 270M takes about 20 s). Every answer is verified
offline with the SDK against the trust bundle: the receipt, and the exact token ids and text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from qward.errors import VerificationError
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.receipts.trust import TrustBundle
from qward.sdk.example_llm import EXAMPLE_LLM_NAME
from qward.sdk.openai_receipts import verify_chat_completion, verify_completion, verify_streamed
from qward.tlog.backend import note_checkpoint

from conftest import Served, require_llm, start_serve, stop_serve

require_llm()

QUESTION = "Question: What is the capital of France?\nAnswer:"
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_serve(tmp_path_factory.mktemp("openai") / "state", "--example-llm")
    yield server
    stop_serve(server)


@pytest.fixture(scope="module")
def trust(served: Served) -> TrustBundle:
    return TrustBundle.from_bytes(
        httpx.get(served.url + "/v1/trust", headers=served.headers).content
    )


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0) as c:
        yield c


def test_models_lists_the_language_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [EXAMPLE_LLM_NAME]


def test_a_completion_is_attested_and_answers(client: openai.OpenAI, trust: TrustBundle) -> None:
    answer = client.completions.create(
        model=EXAMPLE_LLM_NAME, prompt=QUESTION, max_tokens=4, temperature=0, seed=1
    )
    assert "Paris" in answer.choices[0].text
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    assert answer.choices[0].finish_reason == "length"
    verified = verify_completion(answer.model_dump(), trust=trust)
    assert verified.body["runtime"]["generation"]["completion_tokens"] == 4
    # OpenAI's sampling meaning: no top-k or min-p cut of the engine's own, and it is receipted.
    parameters = verified.body["parameters"]
    assert (parameters["top_k"], parameters["min_p"], parameters["top_p"]) == (
        0,
        "0x0.0p+0",
        "0x1.0000000000000p+0",
    )


def test_same_seed_same_token_ids(client: openai.OpenAI, trust: TrustBundle) -> None:
    runs = [
        client.chat.completions.create(
            model=EXAMPLE_LLM_NAME, messages=HELLO, max_tokens=8, temperature=0.9, seed=42
        ).model_dump()
        for _ in range(2)
    ]
    assert runs[0]["qward"]["token_ids"] == runs[1]["qward"]["token_ids"]
    assert runs[0]["qward"]["receipt_id"] != runs[1]["qward"]["receipt_id"]
    for run in runs:
        verify_chat_completion(run, trust=trust)


def test_tampered_tokens_or_text_are_refused(client: openai.OpenAI, trust: TrustBundle) -> None:
    answer = client.chat.completions.create(
        model=EXAMPLE_LLM_NAME, messages=HELLO, max_tokens=6, temperature=0, seed=3
    ).model_dump()
    verify_chat_completion(answer, trust=trust)
    tampered = json.loads(json.dumps(answer))
    tampered["qward"]["token_ids"][0] += 1
    with pytest.raises(VerificationError, match="token ids"):
        verify_chat_completion(tampered, trust=trust)
    tampered = json.loads(json.dumps(answer))
    tampered["choices"][0]["message"]["content"] += "!"
    with pytest.raises(VerificationError, match="text"):
        verify_chat_completion(tampered, trust=trust)
    tampered = json.loads(json.dumps(answer))
    tampered["qward"]["seed"] = 4
    with pytest.raises(VerificationError, match="seed"):
        verify_chat_completion(tampered, trust=trust)


def test_a_streamed_chat_carries_its_receipt_last(
    client: openai.OpenAI, trust: TrustBundle
) -> None:
    text, chunks = "", []
    stream = client.chat.completions.create(
        model=EXAMPLE_LLM_NAME,
        messages=HELLO,
        max_tokens=8,
        temperature=0,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks.append(chunk.model_dump())
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    final = next(c for c in chunks if c.get("qward"))
    assert final["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    verify_streamed(text, final, trust=trust)
    plain = client.chat.completions.create(
        model=EXAMPLE_LLM_NAME, messages=HELLO, max_tokens=8, temperature=0, seed=5
    )
    assert plain.choices[0].message.content == text


def test_the_async_client_works_unchanged(served: Served, trust: TrustBundle) -> None:
    async def ask() -> dict[str, Any]:
        async with openai.AsyncOpenAI(
            base_url=served.url + "/v1", api_key=served.token, max_retries=0
        ) as client:
            answer = await client.completions.create(
                model=EXAMPLE_LLM_NAME, prompt=QUESTION, max_tokens=3, temperature=0, seed=1
            )
            return answer.model_dump()

    verify_completion(asyncio.run(ask()), trust=trust)


def test_stop_strings_end_the_text(client: openai.OpenAI, trust: TrustBundle) -> None:
    answer = client.completions.create(
        model=EXAMPLE_LLM_NAME, prompt=QUESTION, max_tokens=16, temperature=0, seed=1, stop="\n"
    )
    assert answer.choices[0].finish_reason == "stop" and "\n" not in answer.choices[0].text
    verify_completion(answer.model_dump(), trust=trust)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"max_tokens": 5000}, "max_tokens"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=EXAMPLE_LLM_NAME, messages=HELLO, **extra)
    assert param in str(refused.value)


def test_tokens_are_checked_per_model(served: Served) -> None:
    token, _ = TokenStore(served.state / TOKEN_FILE).create(role="client", models=("iris-mlp",))
    with (
        openai.OpenAI(base_url=served.url + "/v1", api_key=token, max_retries=0) as other,
        pytest.raises(openai.PermissionDeniedError),
    ):
        other.completions.create(model=EXAMPLE_LLM_NAME, prompt=QUESTION, max_tokens=2)
    anonymous = httpx.post(
        served.url + "/v1/completions", json={"model": EXAMPLE_LLM_NAME, "prompt": QUESTION}
    )
    assert anonymous.status_code == 401
    with (
        openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0) as own,
        pytest.raises(openai.NotFoundError),
    ):
        own.completions.create(model="no-such-model", prompt=QUESTION, max_tokens=2)


def test_a_stream_the_client_leaves_is_still_receipted(served: Served) -> None:
    def size() -> int:
        note = httpx.get(served.url + "/log/checkpoint").content
        return note_checkpoint(note).size

    before = size()
    body = {"model": EXAMPLE_LLM_NAME, "prompt": QUESTION, "max_tokens": 32, "stream": True}
    with httpx.stream(
        "POST", served.url + "/v1/completions", json=body, headers=served.headers, timeout=60
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    deadline = time.monotonic() + 30
    while size() < before + 3 and time.monotonic() < deadline:  # access, key use, receipt
        time.sleep(0.2)
    assert size() >= before + 3


def test_headers_name_the_receipt(served: Served) -> None:
    body = {"model": EXAMPLE_LLM_NAME, "prompt": QUESTION, "max_tokens": 2, "seed": 9}
    response = httpx.post(
        served.url + "/v1/completions", json=body, headers=served.headers, timeout=60
    )
    assert response.status_code == 200
    qward = response.json()["qward"]
    assert response.headers["x-qward-receipt-id"] == qward["receipt_id"]
    digest = hashlib.sha256(qward["receipt"].encode("utf-8")).hexdigest()
    assert response.headers["x-qward-receipt-sha256"] == digest
