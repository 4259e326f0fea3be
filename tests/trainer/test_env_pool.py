"""EnvPool membership and capacity against real env pods (Chromium)."""

from __future__ import annotations

import asyncio

import pytest
from transformers import AutoTokenizer

from services.protocol.env import BrowserResetOptions
from services.trainer.env_pool import EnvInfraError, EnvPool
from services.trainer.generation.base import SamplingParams
from services.trainer.prompts import PromptBuilder
from services.trainer.rollout import (
    EpisodeRequest,
    GenerationBatcher,
    RolloutEngine,
    RolloutObserver,
)

pytestmark = pytest.mark.chromium
CLICK = BrowserResetOptions(task="click-test", seed=1)


async def test_set_endpoints_adds_new_pods_and_drains_removed_ones(env_pods):
    first, second = env_pods
    pool = EnvPool([first], sessions_per_endpoint=2)
    async with pool.session(CLICK) as running:
        assert running.endpoint == first
        pool.set_endpoints([second])  # first is removed while an episode runs on it
        assert pool.endpoints == [second]
        async with pool.session(CLICK) as new:
            assert new.endpoint == second  # new sessions only go to the new pod
        obs = await running.step("click('13')")  # the running episode finishes where it is
        assert obs.done and obs.reward == 1.0
    assert pool.active_sessions() == {second: 0}  # drained and gone once its session ended
    await pool.aclose()  # idle sessions left open would fill the shared pods for later tests


async def test_sessions_are_reused_and_a_reaped_one_is_replaced(env_pods):
    pool = EnvPool(env_pods[:1], sessions_per_endpoint=2)
    async with pool.session(CLICK) as first:
        assert (await first.step("click('13')")).reward == 1.0
    async with pool.session(CLICK) as second:
        assert second.client is first.client  # the clean session was kept and reset
    await second.client._ws.close()  # the socket dies under the idle client, as when a pod reaps it
    async with pool.session(CLICK) as third:
        assert third.client is not first.client
        assert (await third.step("click('13')")).reward == 1.0
    assert pool.active_sessions() == {env_pods[0]: 0}
    await pool.aclose()


async def test_a_full_pod_sends_episodes_elsewhere_and_counts_it(env_pods, tiny_chat_model):
    """The pool thinks a pod takes 8 sessions; the pod (max 4) answers CAPACITY_REACHED."""
    from services.trainer.generation.scripted import ScriptedBackend

    class Counts(RolloutObserver):
        def __init__(self):
            self.retries: list[str] = []

        def infra_retry(self, reason):
            self.retries.append(reason)

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    prompts = PromptBuilder(tokenizer, fmt="chat")
    observer = Counts()
    pool = EnvPool(env_pods[:1], sessions_per_endpoint=8, capacity_backoff_s=0.2)
    engine = RolloutEngine(
        pool,
        GenerationBatcher(ScriptedBackend(tokenizer), wait_s=0.05),
        prompts,
        sampling=SamplingParams(max_new_tokens=16),
        max_turns=3,
        observer=observer,
    )
    try:
        episodes = await engine.run([EpisodeRequest("click-test", seed=s) for s in range(6)])
    finally:
        await pool.aclose()  # its idle sessions would keep the shared pod full
    assert all(e.success for e in episodes)  # capacity never became a failure
    assert "capacity" in observer.retries
    assert set(observer.retries) == {"capacity"}


async def test_no_endpoint_at_all_is_an_infra_error_not_a_hang():
    pool = EnvPool([], wait_for_endpoint_s=0.5, capacity_backoff_s=0.1)
    with pytest.raises(EnvInfraError, match="no usable env endpoint"):
        await asyncio.wait_for(pool.session(CLICK).__aenter__(), 5)


async def test_a_dead_endpoint_is_avoided_and_reported():
    pool = EnvPool(["http://127.0.0.1:9"], wait_for_endpoint_s=0.5, capacity_backoff_s=0.1)
    with pytest.raises(EnvInfraError) as failure:
        await pool.session(CLICK).__aenter__()
    assert failure.value.reason == "env_unavailable" and failure.value.endpoint.endswith(":9")
    assert pool.active_sessions() == {"http://127.0.0.1:9": 0}
