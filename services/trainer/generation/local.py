"""In-process generation with the trainer's own model (CPU and small runs).

The model is fetched through a provider on every call, so the backend always samples from the
weights being trained (the peft/accelerate wrappers are unwrapped by the provider). Generation
runs in a worker thread so env I/O of other episodes goes on meanwhile.

An episode's context only grows (prompt, reply, env tokens, reply, ...), so each sequence's KV
cache is kept after its turn (``PrefixCaches``) and its next turn prefills only the new tokens,
as vLLM's prefix caching does: without it every turn re-reads the whole episode, and a 10-turn
evaluation on CPU spends most of its time there. Caches are dropped whenever the weights change
(a new policy version). Sequences run one at a time: with their caches that is cheaper on CPU
than a left-padded batch re-reading every context.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from services.trainer.generation.base import Generation, SamplingParams


class _SampledLogprobs(LogitsProcessor):
    """Records log softmax(logits / T) of each sampled token, the distribution TRL scores.

    HF applies custom processors before its temperature/top-p warpers, so ``scores`` here are the
    model's logits. The token chosen at step t shows up as the last input id at step t+1; the last
    step is resolved by ``finish``. Only one vocabulary row per sequence is kept at a time.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.pending: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.pending is not None:
            self.values.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, last_ids: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self.values.append(self.pending.gather(1, last_ids[:, None]).squeeze(1))
            self.pending = None
        return torch.stack(self.values, dim=1)


class PrefixCaches:
    """KV caches of recent sequences by their tokens, least recently used dropped first.

    ``take`` hands out (and forgets) the longest cached prefix of a prompt: a cache grows in place
    as it is used, so it belongs to one sequence at a time (GRPO's group members share a first
    prompt; one of them gets the cache, the others prefill it).
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, tuple[list[int], Any]] = OrderedDict()
        self._next = 0
        self.owner: tuple[int, int] | None = None
        self.hits = self.reused_tokens = 0

    def take(self, prompt: list[int]) -> tuple[Any, int]:
        """(cache, tokens it covers) of the longest stored proper prefix of ``prompt``."""
        best, length = None, 0
        for key, (tokens, _) in self._entries.items():
            if length < len(tokens) < len(prompt) and prompt[: len(tokens)] == tokens:
                best, length = key, len(tokens)
        if best is None:
            return None, 0
        self.hits += 1
        self.reused_tokens += length
        return self._entries.pop(best)[1], length

    def put(self, tokens: list[int], cache: Any) -> None:
        self._entries[self._next] = (tokens, cache)
        self._next += 1
        while sum(len(t) for t, _ in self._entries.values()) > self.max_tokens:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class LocalBackend:
    """``GenerationBackend`` over a Hugging Face causal LM in this process."""

    def __init__(
        self,
        model_provider: Callable[[], PreTrainedModel],
        tokenizer,
        *,
        policy_version: Callable[[], int] = lambda: 0,
        cache_tokens: int = 65536,
    ) -> None:
        self._model_provider = model_provider
        self.caches = PrefixCaches(cache_tokens)
        self._tokenizer = tokenizer
        self._policy_version = policy_version
        self._lock = threading.Lock()
        self._calls = 0  # generate() calls so far: call k samples with params.seed + k
        eos = tokenizer.eos_token_id
        self._eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    @classmethod
    def from_config(cls, config, *, context) -> LocalBackend:
        """From ``LocalBackendConfig``: samples from ``context.model()``, the live weights."""
        if context.model is None:
            raise ValueError("the local generation backend needs the policy model in-process")
        return cls(
            context.model,
            context.tokenizer,
            policy_version=context.policy_version,
            cache_tokens=config.prefix_cache_tokens,
        )

    async def generate(
        self, prompts: list[list[int]], params: SamplingParams, episodes=None
    ) -> list[Generation]:
        if not prompts:
            return []
        return await asyncio.to_thread(self._generate_sync, prompts, params)

    async def close(self) -> None:
        return None

    def _generate_sync(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        with self._lock:
            model = self._model_provider()
            version = self._policy_version()
            if self.caches.owner != (id(model), version):  # other weights: no cache is valid
                self.caches.clear()
                self.caches.owner = (id(model), version)
            was_training = model.training
            model.eval()
            try:
                new_tokens, logprobs = self._run(model, prompts, params)
            finally:
                if was_training:
                    model.train()
        return [
            self._cut(row, lp, params, version)
            for row, lp in zip(new_tokens, logprobs, strict=True)
        ]

    def _run(
        self, model: PreTrainedModel, prompts: list[list[int]], params: SamplingParams
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Each prompt in turn, continuing its cached prefix; new tokens and their logprobs."""
        if params.seed is not None:
            torch.manual_seed(params.seed + self._calls)
        self._calls += 1
        results = [self._one(model, prompt, params) for prompt in prompts]
        return [r[0] for r in results], [r[1] for r in results]

    def _one(
        self, model: PreTrainedModel, prompt: list[int], params: SamplingParams
    ) -> tuple[list[int], list[float]]:
        device = next(model.parameters()).device
        cache, _ = self.caches.take(prompt)
        greedy = params.temperature <= 0
        recorder = _SampledLogprobs(1.0 if greedy else params.temperature)
        kwargs = (
            {"stop_strings": list(params.stop), "tokenizer": self._tokenizer} if params.stop else {}
        )
        input_ids = torch.tensor([prompt], dtype=torch.long, device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                past_key_values=cache,
                max_new_tokens=params.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None,
                pad_token_id=self._pad_id,
                logits_processor=LogitsProcessorList([recorder]),
                use_cache=True,
                return_dict_in_generate=True,
                **kwargs,
            )
        sequence = out.sequences[0].tolist()
        new_tokens = out.sequences[0, len(prompt) :].cpu()
        logprobs = recorder.finish(new_tokens[-1:]).cpu()[0]
        if out.past_key_values is not None:
            covered = out.past_key_values.get_seq_length()
            self.caches.put(sequence[:covered], out.past_key_values)
        return new_tokens.tolist(), logprobs.tolist()

    def _cut(
        self, ids: list[int], logprobs: list[float], params: SamplingParams, version: int
    ) -> Generation:
        """Trim the padding HF appends to rows that finished early, keep the stop token."""
        end, reason = len(ids), "length"
        for i, token in enumerate(ids):
            if token in self._eos_ids:
                end, reason = i + 1, "stop"
                break
            if params.stop:
                text = self._tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
                if any(s in text for s in params.stop):
                    end, reason = i + 1, "stop"
                    break
        ids = ids[:end]
        return Generation(
            token_ids=ids,
            logprobs=logprobs[:end],
            text=self._tokenizer.decode(ids, skip_special_tokens=True),
            policy_version=version,
            finish_reason=reason,
        )
