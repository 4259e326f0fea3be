"""In-process generation with the trainer's own model (CPU and small runs).

The model is fetched through a provider on every call, so the backend always samples from the
weights being trained (the peft/accelerate wrappers are unwrapped by the provider). Generation
runs in a worker thread so env I/O of other episodes goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

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


class LocalBackend:
    """``GenerationBackend`` over a Hugging Face causal LM in this process."""

    def __init__(
        self,
        model_provider: Callable[[], PreTrainedModel],
        tokenizer,
        *,
        policy_version: Callable[[], int] = lambda: 0,
    ) -> None:
        self._model_provider = model_provider
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
        return cls(context.model, context.tokenizer, policy_version=context.policy_version)

    async def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        return await asyncio.to_thread(self._generate_sync, prompts, params)

    async def close(self) -> None:
        return None

    def _generate_sync(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        with self._lock:
            model = self._model_provider()
            version = self._policy_version()
            was_training = model.training
            model.eval()
            try:
                new_tokens, logprobs = self._run(model, prompts, params)
            finally:
                if was_training:
                    model.train()
        return [
            self._cut(row.tolist(), lp.tolist(), params, version)
            for row, lp in zip(new_tokens, logprobs, strict=True)
        ]

    def _run(
        self, model: PreTrainedModel, prompts: list[list[int]], params: SamplingParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, ids in enumerate(prompts):  # left padding: every row ends where generation starts
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[i, width - len(ids) :] = 1
        greedy = params.temperature <= 0
        recorder = _SampledLogprobs(1.0 if greedy else params.temperature)
        if params.seed is not None:
            torch.manual_seed(params.seed + self._calls)
        self._calls += 1
        kwargs = (
            {"stop_strings": list(params.stop), "tokenizer": self._tokenizer} if params.stop else {}
        )
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=params.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None,
                pad_token_id=self._pad_id,
                logits_processor=LogitsProcessorList([recorder]),
                use_cache=True,
                **kwargs,
            )
        new_tokens = out[:, width:].cpu()
        return new_tokens, recorder.finish(new_tokens[:, -1]).cpu()

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
