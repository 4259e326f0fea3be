"""Shared steps of the vLLM end-to-end tests: the trainer's two generation backends side by side.

``RemoteBackend`` (services/trainer/generation/remote.py) talks to the real vLLM server; the
in-process ``LocalBackend`` runs the same weights in Hugging Face transformers. Greedy decoding
must pick the same tokens and report close logprobs.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import torch

from services.trainer.generation.base import Generation, SamplingParams
from services.trainer.generation.local import LocalBackend
from services.trainer.generation.remote import RemoteBackend

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def generate_remote(url: str, prompts: list[list[int]]) -> list[Generation]:
    async def run() -> list[Generation]:
        backend = RemoteBackend(url)
        try:
            return await backend.generate(prompts, GREEDY)
        finally:
            await backend.close()

    return asyncio.run(run())


def generate_local(model, tokenizer, prompts: list[list[int]]) -> list[Generation]:
    """One prompt at a time: no padding, so nothing but the weights can differ."""

    async def run() -> list[Generation]:
        backend = LocalBackend(lambda: model, tokenizer)
        return [(await backend.generate([prompt], GREEDY))[0] for prompt in prompts]

    return asyncio.run(run())


def assert_same_generations(
    remote: list[Generation], local: list[Generation], *, atol: float
) -> float:
    """Same greedy tokens; logprobs within ``atol``. Returns the largest logprob gap seen."""
    worst = 0.0
    for index, (r, h) in enumerate(zip(remote, local, strict=True)):
        assert r.token_ids == h.token_ids, f"prompt {index}: vLLM {r.token_ids} != HF {h.token_ids}"
        for a, b in zip(r.logprobs, h.logprobs, strict=True):
            assert not math.isnan(a), f"prompt {index}: vLLM returned no logprob"
            worst = max(worst, abs(a - b))
    assert worst <= atol, f"largest logprob gap {worst:.2e} > {atol:.0e}"
    return worst


def assert_logprobs_match(
    remote: list[Generation], model, prompts: list[list[int]], *, atol: float
) -> float:
    """vLLM's logprob of each token it sampled vs the HF model's logprob of that same token after
    the same prefix (teacher forcing: what the trainer recomputes). Immune to greedy near-ties."""
    worst = 0.0
    for prompt, generation in zip(prompts, remote, strict=True):
        ids = torch.tensor([prompt + generation.token_ids])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for step, token in enumerate(generation.token_ids):
            expected = logprobs[len(prompt) - 1 + step, token].item()
            worst = max(worst, abs(expected - generation.logprobs[step]))
    assert worst <= atol, f"largest logprob gap {worst:.2e} > {atol:.0e}"
    return worst


def changed(before: list[Generation], after: list[Generation], *, min_logprob_shift: float) -> bool:
    """Other tokens, or the same tokens with clearly other logprobs (random tiny models often
    repeat one token whatever the weights; their distributions still move)."""
    if [g.token_ids for g in before] != [g.token_ids for g in after]:
        return True
    shift = max(
        abs(a - b)
        for old, new in zip(before, after, strict=True)
        for a, b in zip(old.logprobs, new.logprobs, strict=True)
    )
    return shift >= min_logprob_shift


def random_lora(model, *, target_modules: list[str], seed: int, scale: float):
    """A PEFT LoRA (r=8) on ``model`` with random, clearly non-zero B so it changes outputs."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=target_modules)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return peft_model.eval()


def perturbed_copy(folder: Path, out_dir: Path, *, seed: int, scale: float):
    """The model at ``folder`` with every weight nudged, saved as a checkpoint at ``out_dir``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(out_dir)
    return model.eval()
