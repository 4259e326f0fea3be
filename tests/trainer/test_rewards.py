"""Reward sources: weighted into TRL's rewards, and what they do to a group's advantages.

Advantages are TRL's own (its reward weighting and group normalisation), computed from hand-made
episodes through the real rollout function; no env is involved.
"""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.config import RewardConfig, load_config, union_types
from services.trainer.dataset import episode_prompt
from services.trainer.grpo import build_training
from services.trainer.rewards import REWARDS, build_rewards
from services.trainer.rollout import Episode, EpisodeRequest
from services.trainer.trl_batch import to_trl_batch
from tests.trainer.conftest import played


def episodes(encode) -> list[Episode]:
    """One GRPO group on one page: a clean success, a success after an invalid reply, two
    failures (one turn-capped)."""

    def episode(actions: list[str], reward: float, invalid: int) -> Episode:
        ids = [i for a in actions for i in encode(" " + a + "\n")]
        return Episode(
            "click-test", 3, encode("Task: Click.\nAction:"), ids, [1] * len(ids),
            [-1.0] * len(ids), reward=reward, outcome="success" if reward else "truncated",
            turns=len(actions), actions=actions, invalid_actions=invalid,
        )  # fmt: skip

    return [
        episode(["click('13')"], 1.0, 0),
        episode(["click me", "click('13')"], 1.0, 1),
        episode(["click('12')", "click('11')", "click('10')"], 0.0, 0),
        episode(["noop()", "noop()", "noop()"], 0.0, 0),
    ]


def advantages(tiny_base_model, tmp_path, rewards: list[dict], make_group=None) -> list[float]:
    """TRL's advantages of one GRPO group (``episodes`` unless ``make_group(encode)`` gives
    another) under ``rewards``."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    group = (make_group or episodes)(lambda text: tokenizer.encode(text, add_special_tokens=False))
    cfg = load_config(
        {
            "run": {"output_dir": str(tmp_path), "log_episodes": False},
            "model": {"source": str(tiny_base_model)},
            "tasks": {"train": ["click-test"], "max_turns": 3},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}},
            "rewards": rewards,
            "lora": {"enabled": False},
            "grpo": {
                "max_steps": 1,
                "prompts_per_step": 1,
                "num_generations": 4,
                "micro_batch_size": 4,
            },
            "metrics": {"port": None},
        }
    )
    training = build_training(
        cfg,
        ["http://unused:1"],
        model=AutoModelForCausalLM.from_pretrained(tiny_base_model),
        tokenizer=tokenizer,
    )
    training.stack.start = played(group)
    try:
        prompt = episode_prompt(EpisodeRequest("click-test", 3))
        training.trainer.model.train()  # TRL groups by num_generations in train mode
        rows = [{"prompt": prompt} for _ in range(4)]  # TRL writes the facts into each row
        scored = training.trainer._generate_and_score_completions(rows)
    finally:
        training.close()
    return scored["advantages"].tolist()


def test_the_task_reward_alone_cannot_tell_the_two_successes_apart(tiny_base_model, tmp_path):
    clean, sloppy, failed, idle = advantages(tiny_base_model, tmp_path, [{"type": "task"}])
    assert clean == pytest.approx(sloppy) and clean > 0 > failed
    assert failed == pytest.approx(idle)


def test_an_invalid_action_penalty_ranks_the_clean_success_first(tiny_base_model, tmp_path):
    rewards = [{"type": "task"}, {"type": "invalid_action", "weight": 0.5}]
    clean, sloppy, failed, _idle = advantages(tiny_base_model, tmp_path, rewards)
    assert clean > sloppy > 0 > failed


def test_a_turn_cost_prefers_the_shorter_of_equal_outcomes(tiny_base_model, tmp_path):
    rewards = [{"type": "task"}, {"type": "turn_cost", "weight": 0.1}]
    clean, sloppy, failed, idle = advantages(tiny_base_model, tmp_path, rewards)
    assert clean > sloppy > 0 > failed and failed == pytest.approx(idle)


def test_every_source_gives_a_dropped_sample_its_groups_mean():
    succeeded = Episode("click-test", 1, [5], [7], [1], [-0.5], reward=1.0, outcome="success",
                        turns=2, invalid_actions=1)  # fmt: skip
    failed = Episode("click-test", 1, [5], [7], [1], [-0.5], reward=0.0, outcome="failure",
                     turns=1)  # fmt: skip
    dropped = Episode("click-test", 1, outcome="dropped")
    batch = to_trl_batch(["p"] * 3, [succeeded, failed, dropped], eos_id=2, max_turns=lambda _: 3)
    for source in build_rewards(load_config_rewards()):
        scores = source(completions=None, **batch)
        assert scores[2] == pytest.approx((scores[0] + scores[1]) / 2), source.__name__


def load_config_rewards():
    from services.trainer.config import (
        InvalidActionRewardConfig,
        TaskRewardConfig,
        TurnCostRewardConfig,
    )

    return [TaskRewardConfig(), InvalidActionRewardConfig(), TurnCostRewardConfig()]


def test_every_reward_type_has_a_registry_entry():
    assert union_types(RewardConfig) == set(REWARDS.names())
