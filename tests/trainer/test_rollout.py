"""The rollout engine against real env pods (Chromium) with a scripted policy.

The scripted policy reads the page like a perfect agent, so these tests check the reward path,
the multi-turn token bookkeeping and the invalid-action path without a trained model.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from services.trainer.env_pool import EnvPool
from services.trainer.generation.base import SamplingParams
from services.trainer.prompts import PromptBuilder
from services.trainer.rollout import EpisodeRequest, GenerationBatcher, RolloutEngine

pytestmark = pytest.mark.chromium


def _engine(urls, tokenizer, backend, fmt="chat", **kwargs) -> RolloutEngine:
    prompts = PromptBuilder(tokenizer, fmt=fmt, axtree_max_tokens=256)
    return RolloutEngine(
        EnvPool(urls, sessions_per_endpoint=4),
        GenerationBatcher(backend, max_batch_size=8, wait_s=0.05),
        prompts,
        sampling=SamplingParams(max_new_tokens=16, stop=prompts.stop),
        max_turns=kwargs.pop("max_turns", 4),
        max_context_tokens=100_000,
        max_completion_tokens=100_000,
        **kwargs,
    )


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_chat_model):
    return AutoTokenizer.from_pretrained(tiny_chat_model)


async def test_scripted_policy_gets_reward_one_on_click_test(
    env_pods, chat_tokenizer, scripted_backend
):
    backend = scripted_backend(chat_tokenizer)
    engine = _engine(env_pods, chat_tokenizer, backend)
    episodes = await engine.run([EpisodeRequest("click-test", seed=s) for s in (1, 1, 2, 3)])
    assert [e.reward for e in episodes] == [1.0] * 4
    # (A loaded machine may time a click out; the policy then clicks again: turns can be 2.)
    assert all(e.success and e.invalid_actions == 0 for e in episodes)
    assert {e.endpoint for e in episodes} == set(env_pods)  # spread over both pods
    assert sum(engine.replies.batch_sizes) == 4  # one generated turn per episode


async def test_multi_turn_tokens_mask_and_logprobs_are_kept_exactly(
    env_pods, chat_tokenizer, scripted_backend
):
    backend = scripted_backend(chat_tokenizer)
    engine = _engine(env_pods, chat_tokenizer, backend)
    (ep,) = await engine.run([EpisodeRequest("enter-text", seed=5)])

    assert ep.success and ep.turns >= 2 and ep.actions[0].startswith("fill(")
    assert len(backend.outputs) == ep.turns
    assert len(ep.logprobs) == len(ep.completion_ids) == len(ep.env_mask)
    pos = 0
    for turn, gen in enumerate(backend.outputs):
        # Each turn was generated from exactly the prefix training will condition it on.
        assert backend.calls[turn] == [ep.prompt_ids + ep.completion_ids[:pos]]
        end = pos + len(gen.token_ids)
        assert ep.completion_ids[pos:end] == gen.token_ids  # the sampled ids, not re-tokenized
        assert ep.env_mask[pos:end] == [1] * len(gen.token_ids)
        assert ep.logprobs[pos:end] == gen.logprobs
        pos = end
        if turn + 1 < len(backend.outputs):  # the env's reply: masked, logprob 0
            end = len(backend.calls[turn + 1][0]) - len(ep.prompt_ids)
            assert end > pos and ep.env_mask[pos:end] == [0] * (end - pos)
            assert ep.logprobs[pos:end] == [0.0] * (end - pos)
            env_text = chat_tokenizer.decode(ep.completion_ids[pos:end])
            assert f"Previous action: {ep.actions[turn]}" in env_text
            assert f"Turn {turn + 2} of 4" in env_text
            assert env_text.rstrip().endswith("<|im_start|>assistant")
            pos = end
    # The sequence is closed with EOS for TRL's bookkeeping, masked (the model did not write it).
    assert ep.completion_ids[pos:] == [chat_tokenizer.eos_token_id] and ep.env_mask[pos:] == [0]
    assert ep.policy_versions == [7] * ep.turns
    assert ep.generated_tokens == sum(ep.env_mask)


async def test_unparseable_reply_goes_to_the_env_and_is_counted(
    env_pods, chat_tokenizer, scripted_backend
):
    backend = scripted_backend(chat_tokenizer, replies=["I would press the big button"])
    engine = _engine(env_pods, chat_tokenizer, backend)
    (ep,) = await engine.run([EpisodeRequest("click-test", seed=2)])
    assert ep.actions[0] == "I would press the big button"  # sent verbatim
    assert ep.invalid_actions == 1 and ep.turns >= 2 and ep.success
    second_prompt = chat_tokenizer.decode(backend.calls[1][0])
    assert "Its error:" in second_prompt  # the env's own error message reached the policy


async def test_fewshot_format_plays_multi_turn_and_stops_at_newline(
    env_pods, tiny_base_model, scripted_backend
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    backend = scripted_backend(tokenizer, suffix="\n")
    engine = _engine(env_pods, tokenizer, backend, fmt="fewshot")
    (ep,) = await engine.run([EpisodeRequest("enter-text", seed=8)])
    assert ep.success and ep.turns >= 2
    text = tokenizer.decode(ep.prompt_ids + ep.completion_ids)
    assert text.count("Action: click(") >= 2  # the worked examples
    assert "\nPage (step 2):\n" in text.rsplit("Task:", 1)[1]


async def test_turn_cap_ends_an_episode_as_truncated(env_pods, chat_tokenizer, scripted_backend):
    backend = scripted_backend(chat_tokenizer, replies=["noop()", "noop()"])
    engine = _engine(env_pods, chat_tokenizer, backend, max_turns=2)
    (ep,) = await engine.run([EpisodeRequest("click-test", seed=3)])
    assert ep.outcome == "truncated" and ep.reward == 0.0 and ep.turns == 2


async def test_a_refused_generation_request_stops_instead_of_replaying(env_pods, chat_tokenizer):
    """HTTP 4xx (a prompt longer than the server's context) fails the same way on every replay:
    the engine raises it instead of replaying the episode (and dropping whole rollouts)."""
    from services.trainer.generation.base import GenerationError, GenerationRequestError

    class Refuses:
        calls = 0

        async def generate(self, prompts, params, episodes=None):
            Refuses.calls += 1
            raise GenerationRequestError("HTTP 400: maximum context length is 512 tokens")

        async def close(self):
            return None

    engine = _engine(env_pods, chat_tokenizer, Refuses(), generation_backoff_s=0.01)
    with pytest.raises(GenerationRequestError, match="maximum context length"):
        await engine.play(EpisodeRequest("click-test", seed=1))
    assert Refuses.calls == 1

    class Flaky(Refuses):
        async def generate(self, prompts, params, episodes=None):
            Refuses.calls += 1
            raise GenerationError("connection refused")

    Refuses.calls = 0
    engine = _engine(env_pods, chat_tokenizer, Flaky(), generation_backoff_s=0.01)
    episode = await engine.play(EpisodeRequest("click-test", seed=1))
    assert episode.dropped and Refuses.calls == engine.max_infra_retries + 1
