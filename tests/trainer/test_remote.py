"""The remote generation backend against a tiny fake OpenAI-compatible server (protocol only).

The real vLLM service is tested in tests/inference (make test-vllm); this checks that the client
speaks the OpenAI ``/v1/completions`` protocol with token-id prompts, reads token ids and logprobs
in both forms servers use, and fails clearly (as an infrastructure error) otherwise.
"""

from __future__ import annotations

import pytest

from services.trainer.generation.base import (
    GenerationError,
    GenerationRequestError,
    SamplingParams,
)
from services.trainer.generation.remote import RemoteBackend

PARAMS = SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9, stop=("\n",))


async def test_token_ids_in_token_ids_out_with_logprobs_and_version(fake_server):
    fake, url = fake_server
    backend = RemoteBackend(url)
    try:
        gens = await backend.generate([[1, 2, 3, 4], [7, 8, 9]], PARAMS)
    finally:
        await backend.close()
    assert [g.token_ids for g in gens] == [[3, 4, 5], [8, 9, 10]]
    assert gens[0].logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert gens[0].policy_version == 12 and gens[0].text == "click('13')"
    body = fake.requests[0]
    assert body["model"] == "policy"  # picked from /v1/models
    assert body["prompt"] in ([1, 2, 3, 4], [7, 8, 9])  # token ids, never text
    assert body["logprobs"] == 1 and body["return_token_ids"] is True
    assert body["stop"] == ["\n"] and body["max_tokens"] == 8 and body["top_p"] == 0.9


async def test_a_sampling_seed_gives_every_request_its_own_seed(fake_server):
    fake, url = fake_server
    backend = RemoteBackend(url)
    seeded = SamplingParams(max_new_tokens=8, temperature=0.7, seed=100)
    try:
        await backend.generate([[1, 2], [3, 4]], seeded)
        await backend.generate([[1, 2]], seeded)
        await backend.generate([[1, 2]], PARAMS)  # no seed: the server draws its own
    finally:
        await backend.close()
    assert sorted(r["seed"] for r in fake.requests[:3]) == [100, 101, 102]
    assert "seed" not in fake.requests[3]


async def test_servers_that_return_tokens_as_ids_work_too(fake_server):
    fake, url = fake_server
    fake.mode = "tokens_as_ids"
    backend = RemoteBackend(url, model="my-adapter")
    try:
        (gen,) = await backend.generate([[5, 6, 7]], PARAMS)
    finally:
        await backend.close()
    assert gen.token_ids == [6, 7, 8] and fake.requests[0]["model"] == "my-adapter"


@pytest.mark.parametrize(
    ("mode", "message"),
    [("text_only", "return_tokens_as_token_ids"), ("error", "HTTP 500: .*engine dead")],
)
async def test_unusable_replies_fail_as_generation_errors(fake_server, mode, message):
    fake, url = fake_server
    fake.mode = mode
    backend = RemoteBackend(url, model="policy")
    try:
        with pytest.raises(GenerationError, match=message):
            await backend.generate([[1, 2, 3]], PARAMS)
    finally:
        await backend.close()


async def test_unreachable_server_is_a_generation_error():
    backend = RemoteBackend("http://127.0.0.1:9", model="policy", timeout_s=2)
    try:
        with pytest.raises(GenerationError, match=r"127\.0\.0\.1:9"):
            await backend.generate([[1]], PARAMS)
    finally:
        await backend.close()


async def test_a_request_the_server_refuses_is_not_an_infrastructure_failure(fake_server):
    """HTTP 4xx (a prompt longer than the server's context, a wrong key) would fail again on any
    replay: it is a GenerationRequestError, which the rollout engine does not replay."""
    fake, url = fake_server
    fake.mode = "too_long"
    backend = RemoteBackend(url, model="policy")
    try:
        with pytest.raises(GenerationRequestError, match="maximum context length"):
            await backend.generate([[1, 2, 3]], PARAMS)
    finally:
        await backend.close()
    wrong_key = RemoteBackend(url, api_key="nope", wait_ready_s=300)
    try:
        with pytest.raises(GenerationRequestError, match="401"):
            await wrong_key.wait_ready()  # at once, not after 300 s of waiting
    finally:
        await wrong_key.close()


async def test_waiting_for_a_server_that_is_not_up_yet(fake_server):
    _fake, url = fake_server
    backend = RemoteBackend(url, wait_ready_s=5)
    try:
        await backend.wait_ready()  # up: returns at once
    finally:
        await backend.close()
    down = RemoteBackend("http://127.0.0.1:9", wait_ready_s=2)
    try:
        with pytest.raises(GenerationError, match="no generation server ready after 2 s"):
            await down.wait_ready()
    finally:
        await down.close()
