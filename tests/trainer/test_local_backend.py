"""The in-process generation backend: seeded sampling is reproducible, yet fresh on every call."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.generation.base import SamplingParams
from services.trainer.generation.local import LocalBackend
from services.trainer.models import build_random_model

HOT = SamplingParams(max_new_tokens=12, temperature=2.0, seed=7)


def _draws(model, tokenizer, prompt: list[int], calls: int) -> list[list[int]]:
    backend = LocalBackend(lambda: model, tokenizer)
    return [asyncio.run(backend.generate([prompt], HOT))[0].token_ids for _ in range(calls)]


def test_seeded_sampling_replays_per_backend_and_differs_between_calls(tiny_base_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    prompt = tokenizer("Task: click the button\\nAction:")["input_ids"]

    first = _draws(model, tokenizer, prompt, calls=3)
    # The same prompt sampled again must not replay the same random numbers (a fixed seed per
    # call would make every turn of an evaluation draw alike) ...
    assert len({tuple(ids) for ids in first}) == 3
    # ... while a new backend with the same seed reproduces the whole sequence.
    assert _draws(model, tokenizer, prompt, calls=3) == first


GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)


def _episode(backend, prompt: list[int], env_tokens: list[int], turns: int) -> list:
    """Turns of a growing context: reply, then env tokens, then the next reply..."""
    generations, context = [], list(prompt)
    for _ in range(turns):
        generation = asyncio.run(backend.generate([context], GREEDY))[0]
        generations.append(generation)
        context = context + generation.token_ids + env_tokens
    return generations


@pytest.mark.parametrize("arch", ["qwen2", "lfm2"])
def test_a_growing_episode_continues_its_cache_with_the_same_tokens(arch, tmp_path):
    """Each turn prefills only its new tokens (LFM2's conv state included) and writes exactly
    what a full re-read writes, with the same logprobs."""
    folder = build_random_model(arch, tmp_path / arch, size="tiny")
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder),
    )
    prompt, env = list(range(5, 60)), list(range(100, 140))
    cached = LocalBackend(lambda: model, tokenizer)
    fresh = LocalBackend(lambda: model, tokenizer, cache_tokens=0)
    with_cache, without = _episode(cached, prompt, env, 4), _episode(fresh, prompt, env, 4)
    assert [g.token_ids for g in with_cache] == [g.token_ids for g in without]
    for a, b in zip(with_cache, without, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert cached.caches.hits == 3 and fresh.caches.hits == 0


def test_caches_are_dropped_when_the_weights_change_and_never_shared(tiny_chat_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    version = [0]
    backend = LocalBackend(lambda: model, tokenizer, policy_version=lambda: version[0])
    prompt = list(range(5, 60))
    first = asyncio.run(backend.generate([prompt, prompt], GREEDY))
    assert first[0].token_ids == first[1].token_ids  # one group, one first prompt, no sharing
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    version[0] = 1  # an optimizer step: the old caches describe other weights
    context = prompt + first[0].token_ids + list(range(100, 120))
    after = asyncio.run(backend.generate([context], GREEDY))[0]
    fresh = LocalBackend(lambda: model, tokenizer, cache_tokens=0)
    assert after.token_ids == asyncio.run(fresh.generate([context], GREEDY))[0].token_ids
    assert backend.caches.hits == 0
