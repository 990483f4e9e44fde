"""Attested text generation through the protected core, with the real Gemma 3 270M model.

The model is sealed and registered like any other; requests are sealed to the core; every
generation gets a receipt binding the request digest, the exact token ids and text, the sampling
parameters, the seed and the engine profile; replays regenerate in the worker and compare token ids
exactly.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qward.core_api import GenerationResult, TokenChunk
from qward.encoding import canonical_json
from qward.errors import InputError, NotFoundError, VerificationError
from qward.protected.generation import judge_generation
from qward.receipts.generation import check_completion, output_sha256, token_ids_sha256
from qward.receipts.replay_verdict import BITWISE, MISMATCH
from qward.sdk.client import Client, seal_generation_request, verify
from qward.sdk.core_process import CoreProcess
from qward.sdk.example_llm import EXAMPLE_LLM_NAME, example_llm_model, example_llm_template
from qward.tlog.backend import note_checkpoint

from conftest import require_llm

require_llm()

QUESTION = "Question: What is the capital of France?\nAnswer:"


def _completion(prompt: str, *, temperature: float = 0.0, max_tokens: int = 8) -> dict[str, Any]:
    parameters = {"temperature": temperature.hex(), "max_tokens": max_tokens}
    return {"mode": "completion", "prompt": prompt, "parameters": parameters}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm-core") / "state"


@pytest.fixture(scope="module")
def core(state: Path) -> Iterator[CoreProcess]:
    process = CoreProcess.start(state)
    with process.client() as client:
        Client(client, trust=client.trust()).register(
            example_llm_model(), name=EXAMPLE_LLM_NAME, chat_template=example_llm_template()
        )
    yield process
    process.stop()


@pytest.fixture()
def sdk(core: CoreProcess) -> Iterator[Client]:
    with core.client() as client:
        yield Client(client, trust=client.trust())


def test_a_generation_receipt_binds_request_tokens_text_and_profile(sdk: Client) -> None:
    request = _completion(QUESTION)
    result = sdk.generate(EXAMPLE_LLM_NAME, request, seed=7)
    assert "Paris" in result.text
    body = result.verified.body
    assert body["input"] == {"sha256": hashlib.sha256(canonical_json(request)).hexdigest()}
    assert body["output"]["sha256"] == output_sha256(result.record["token_ids"], result.text)
    assert body["seed"] == 7 and body["parameters"]["temperature"] == (0.0).hex()
    generation = body["runtime"]["generation"]
    assert generation["completion_tokens"] == len(result.record["token_ids"]) == 8
    assert generation["finish_reason"] == "length"
    assert generation["token_ids_sha256"] == token_ids_sha256(result.record["token_ids"])
    assert body["runtime"]["engine"] == "llama.cpp"
    assert body["runtime"]["session_options"]["settings"]["n_threads"] == 1
    assert body["attestation"]["status"] == "software-only"
    assert not body["isolation"]["degraded"]


def test_a_chat_binds_its_template_digest(sdk: Client) -> None:
    request = {
        "mode": "chat",
        "messages": [{"role": "user", "content": "Say hello."}],
        "parameters": {"temperature": (0.7).hex(), "max_tokens": 6},
    }
    result = sdk.generate(EXAMPLE_LLM_NAME, request, seed=3)
    template = hashlib.sha256(example_llm_template().encode("utf-8")).hexdigest()
    assert result.verified.body["runtime"]["generation"]["chat_template_sha256"] == template


def test_a_tampered_token_list_or_text_is_refused(sdk: Client) -> None:
    result = sdk.generate(EXAMPLE_LLM_NAME, _completion(QUESTION), seed=1)
    tokens, text = list(result.record["token_ids"]), result.text
    check_completion(result.verified.body, token_ids=tokens, text=text)
    for position in range(len(tokens)):
        tampered = [*tokens[:position], tokens[position] + 1, *tokens[position + 1 :]]
        with pytest.raises(VerificationError, match="token ids"):
            check_completion(result.verified.body, token_ids=tampered, text=text)
    with pytest.raises(VerificationError, match="text"):
        check_completion(result.verified.body, token_ids=tokens, text=text + " ")


def test_streamed_tokens_are_the_receipted_ones(core: CoreProcess, sdk: Client) -> None:
    request = _completion("Once upon a time,", temperature=0.8, max_tokens=12)
    sealed = seal_generation_request(request, trust=sdk.trust)
    with core.client() as client:
        items = list(client.generate_stream(EXAMPLE_LLM_NAME, sealed, seed=11, by_name=True))
    chunks, final = items[:-1], items[-1]
    assert all(isinstance(c, TokenChunk) for c in chunks) and isinstance(final, GenerationResult)
    assert [c.token_id for c in chunks] == final.record["token_ids"]
    assert "".join(c.text for c in chunks) == final.record["text"]
    plain = sdk.generate(EXAMPLE_LLM_NAME, request, seed=11)
    assert plain.record["token_ids"] == final.record["token_ids"]
    verified = verify(final.receipt, trust=sdk.trust)
    check_completion(verified.body, token_ids=final.record["token_ids"], text=final.record["text"])


def test_a_stream_the_client_drops_is_still_receipted(core: CoreProcess, sdk: Client) -> None:
    with core.client() as client:
        before = _log_size(client.checkpoint())
        sealed = seal_generation_request(_completion(QUESTION, max_tokens=24), trust=sdk.trust)
        stream = client.generate_stream(EXAMPLE_LLM_NAME, sealed, seed=2, by_name=True)
        assert isinstance(next(stream), TokenChunk)
        stream.close()
        deadline = time.monotonic() + 30
        # Key use, then the receipt: the core finishes the generation after the client left.
        while _log_size(client.checkpoint()) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _log_size(client.checkpoint()) >= before + 2


def test_language_model_requests_are_checked(core: CoreProcess, sdk: Client) -> None:
    with pytest.raises(NotFoundError):
        sdk.generate("no-such-model", _completion(QUESTION), seed=0)
    with pytest.raises(InputError, match="max_tokens"):
        sdk.generate(EXAMPLE_LLM_NAME, _completion(QUESTION, max_tokens=0), seed=0)
    with pytest.raises(InputError, match="prompt"):
        sdk.generate(EXAMPLE_LLM_NAME, {"mode": "completion", "parameters": {}}, seed=0)


def test_generation_verdicts_compare_token_ids_exactly() -> None:
    body = {
        "output": {"sha256": output_sha256([1, 2, 3], "abc")},
        "runtime": {"generation": {"token_ids_sha256": token_ids_sha256([1, 2, 3])}},
    }
    same = {"token_ids": [1, 2, 3], "text": "abc"}
    assert judge_generation(body, same, None)[0] == BITWISE
    other = {"token_ids": [1, 9, 3], "text": "a9c"}
    verdict, detail = judge_generation(body, other, [1, 2, 3])
    assert verdict == MISMATCH and "token 1: expected 2, got 9" in detail
    with pytest.raises(InputError, match="not the ones the receipt binds"):
        judge_generation(body, other, [1, 2, 4])


def test_twenty_seeded_generations_replay_bitwise_in_fresh_workers(
    core: CoreProcess, state: Path, sdk: Client
) -> None:
    originals = []
    for seed in range(20):
        request = _completion(f"Story {seed}: Once upon a time,", temperature=0.9, max_tokens=12)
        originals.append((request, sdk.generate(EXAMPLE_LLM_NAME, request, seed=seed)))
    assert len({tuple(r.record["token_ids"]) for _, r in originals}) > 1
    core.stop()
    fresh = CoreProcess.start(state)  # new workers: nothing of the first run is left in memory
    try:
        with fresh.client() as client:
            replayer = Client(client, trust=client.trust())
            for request, result in originals:
                replay = replayer.replay_generation(
                    result.receipt, request, original_token_ids=result.record["token_ids"]
                )
                assert replay.verdict == BITWISE
                assert replay.record["token_ids"] == result.record["token_ids"]
            tampered = [*originals[0][1].record["token_ids"]]
            tampered[0] += 1
            with pytest.raises(VerificationError, match="original token ids"):
                replayer.replay_generation(
                    originals[0][1].receipt, originals[0][0], original_token_ids=tampered
                )
    finally:
        fresh.stop()


def _log_size(note: bytes) -> int:
    return note_checkpoint(note).size


def test_qward_chat_writes_a_receipt_that_verifies_and_replays(tmp_path: Path) -> None:
    qward = [sys.executable, "-m", "qward"]
    prompt = "Question: What is the capital of France?\nAnswer:"
    done = subprocess.run(
        [*qward, "chat", "--completion", prompt, "--max-tokens", "4", "--receipt", "r.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and "receipt" in done.stdout
    assert (tmp_path / "r.json.generation.json").stat().st_mode & 0o077 == 0
    for command in (["verify", "r.json"], ["replay", "r.json"]):
        done = subprocess.run(
            [*qward, *command], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    assert "bitwise-identical" in done.stdout
    companion = tmp_path / "r.json.generation.json"
    companion.write_bytes(companion.read_bytes().replace(b'"token_ids":[', b'"token_ids":[1,'))
    done = subprocess.run(
        [*qward, "verify", "r.json"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "token ids" in done.stderr
