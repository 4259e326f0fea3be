"""A full fine-tune at the chart's values-full settings (bf16, lr 1e-6) really moves the weights.

In pure bf16 an Adam step of ~lr = 1e-6 is far below the spacing of bf16 numbers near a typical
weight (1.2e-4 at 0.02), so almost every update rounds away and a 500-step run would not learn.
The trainer keeps float32 master weights and computes in bf16 (autocast), like every mixed-
precision trainer. Hand-made episodes (no env) drive one real GRPO step through TRL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.config import load_config
from services.trainer.grpo import build_training, run_training
from services.trainer.loading import parameter_dtype
from services.trainer.rollout import Episode
from tests.trainer.conftest import played

VALUES_FULL = Path(__file__).resolve().parents[2] / "helm/browser-rl/values-full.yaml"
PROMPT = "Task: Click the button.\nPage:\n[13] button 'Click Me!'\nAction:"


def values_full_settings() -> tuple[str, float]:
    trainer = yaml.safe_load(VALUES_FULL.read_text())["trainer"]["config"]
    assert trainer["lora"]["enabled"] is False
    return trainer["model"]["dtype"], trainer["grpo"]["learning_rate"]


def fraction_moved(tiny_base_model, tmp_path, *, master_weights: bool) -> float:
    dtype, learning_rate = values_full_settings()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    prompt = encode(PROMPT)

    def episode(action: str, reward: float) -> Episode:
        ids = encode(action)
        outcome = "success" if reward else "failure"
        return Episode("click-test", 1, prompt, ids, [1] * len(ids), [-1.0] * len(ids),
                       reward=reward, outcome=outcome, turns=1, actions=[action])  # fmt: skip

    group = [episode(" click('13')\n", 1.0), episode(" click('12')\n", 0.0)] * 2
    cfg = load_config(
        {
            "run": {"output_dir": str(tmp_path / "run"), "log_episodes": False},
            "model": {"source": str(tiny_base_model), "dtype": dtype},
            "tasks": {"train": ["click-test"]},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}},
            "lora": {"enabled": False},
            "grpo": {
                "max_steps": 1,
                "prompts_per_step": 1,
                "num_generations": 4,
                "micro_batch_size": 2,
                "learning_rate": learning_rate,
            },
            "checkpoint": {"save_steps": 100},
            "metrics": {"port": None},
            "use_cpu": False,
        }
    )
    # The GPU config, run on this CPU machine: bf16 autocast works on CPU too (the config only
    # refuses bf16 with use_cpu so that CPU users get float32 by default).
    cfg = cfg.model_copy(update={"use_cpu": True})
    weights = parameter_dtype(cfg, torch) if master_weights else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model, dtype=weights)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    training = build_training(cfg, ["http://unused:1"], model=model, tokenizer=tokenizer)
    training.stack.start = played(group)
    try:
        run_training(training, cfg)
    finally:
        training.close()
    after = dict(training.trainer.model.named_parameters())
    moved = sum(int((before[n] != after[n].detach()).sum()) for n in before)
    return moved / sum(p.numel() for p in before.values())


@pytest.mark.slow
def test_values_full_settings_move_the_weights_with_float32_master_weights(
    tiny_base_model, tmp_path
):
    dtype, _ = values_full_settings()
    assert dtype == "bfloat16"
    assert fraction_moved(tiny_base_model, tmp_path / "fp32", master_weights=True) > 0.99
    # What the trainer used to do (parameters loaded in bf16): the step rounds away.
    assert fraction_moved(tiny_base_model, tmp_path / "bf16", master_weights=False) < 0.1
