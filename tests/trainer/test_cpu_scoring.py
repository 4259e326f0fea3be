"""The CPU LM-head scoring patch changes cost, never results."""

from __future__ import annotations

import torch
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from services.trainer.trl_compat import score_only_completion_tokens_on_cpu


def test_cpu_scoring_patch_keeps_the_logprobs(tiny_chat_model, monkeypatch):
    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton)  # undone after the test
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    torch.manual_seed(0)
    input_ids = torch.randint(5, 1000, (3, 40))
    attention = torch.ones_like(input_ids)
    attention[0, :6] = 0  # left padding
    labels = input_ids.masked_fill(attention == 0, -100)
    labels[:, :-12] = -100  # only the last 12 positions are completion

    def scored():
        out = model(
            input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True
        )
        out.log_probs.sum().backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        model.zero_grad()
        return out.log_probs[:, -12:].detach(), out.entropy[:, -12:].detach(), grad

    full = scored()
    assert score_only_completion_tokens_on_cpu()
    compact = scored()
    for a, b in zip(full, compact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
