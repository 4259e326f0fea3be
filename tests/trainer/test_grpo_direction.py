"""One GRPO step moves the policy the right way: toward the rewarded episode, away from the rest.

The end-to-end tests show that steps run; this one shows that the sign, the grouping and the
masks are right, on hand-made episodes with known rewards (no env needed): the rewarded action
gains likelihood, the unrewarded ones lose it, and env tokens inside an episode are never trained.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.config import load_config
from services.trainer.grpo import build_training, run_training
from services.trainer.rollout import Episode
from tests.trainer.conftest import played

PROMPT = "Task: Click the button.\nPage:\n[13] button 'Click Me!'\nAction:"
GOOD, BAD, INVALID = " click('13')\n", " click('12')\n", " fill('13', 'x')\n"
ENV_REPLY = "Page (step 2):\n[13] button 'Click Me!'\nAction:"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_grpo_step_favours_the_rewarded_episode(tiny_base_model, tmp_path, lora):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    prompt, env = encode(PROMPT), encode(ENV_REPLY)

    def episode(action: str, reward: float, *, two_turns: bool = False) -> Episode:
        ids = encode(action)
        completion, mask = ids, [1] * len(ids)
        if two_turns:  # the same action again after the env's reply (masked: not the model's)
            completion, mask = ids + env + ids, mask + [0] * len(env) + mask
        return Episode(
            task="click-test",
            seed=1,
            prompt_ids=prompt,
            completion_ids=completion,
            env_mask=mask,
            logprobs=[-1.0] * len(completion),
            reward=reward,
            outcome="success" if reward else "truncated",
            turns=2 if two_turns else 1,
            actions=[action.strip()] * (2 if two_turns else 1),
        )

    group = [
        episode(GOOD, 1.0),
        episode(BAD, 0.0, two_turns=True),
        episode(INVALID, 0.0),
        episode(GOOD, 1.0),
    ]
    cfg = load_config(
        {
            "run": {"output_dir": str(tmp_path / "run"), "log_episodes": False},
            "model": {"source": str(tiny_base_model)},
            "tasks": {"train": ["click-test"], "max_turns": 2},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}},
            "lora": {"enabled": lora},
            "grpo": {
                "max_steps": 1,
                "prompts_per_step": 1,
                "num_generations": 4,
                "micro_batch_size": 2,
                "learning_rate": 1e-3,
            },
            "checkpoint": {"save_steps": 100},
            "metrics": {"port": None},
        }
    )
    training = build_training(
        cfg,
        cfg.env.discovery.endpoints,
        model=AutoModelForCausalLM.from_pretrained(tiny_base_model),
        tokenizer=tokenizer,
    )
    training.stack.start = played(group)  # the step's rollout: the episodes above

    def logp(text: str) -> float:
        ids = torch.tensor([prompt + encode(text)])
        with torch.no_grad():
            logits = training.trainer.model(ids).logits[0, len(prompt) - 1 : -1]
        return logits.log_softmax(-1).gather(1, ids[0, len(prompt) :, None]).sum().item()

    def env_logp() -> float:
        return logp(BAD + ENV_REPLY) - logp(BAD)

    try:
        before = {a: logp(a) for a in (GOOD, BAD, INVALID)}
        env_before = env_logp()
        run_training(training, cfg)
        after = {a: logp(a) for a in (GOOD, BAD, INVALID)}
        env_after = env_logp()
    finally:
        training.close()

    gain = {a: after[a] - before[a] for a in before}
    assert gain[GOOD] > gain[BAD] and gain[GOOD] > gain[INVALID]
    # The env's reply occurs only in an unrewarded episode, where it is masked: it moves less than
    # an unrewarded action. (Unmasked, it drops ~10x more and this fails: checked by flipping it.)
    assert abs(env_after - env_before) < abs(gain[INVALID])
