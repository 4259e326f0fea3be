"""The off-policy correction (grpo_trainer.py) on a real TRL GRPOTrainer and a tiny model: a
token an older policy sampled is anchored on its sampler's log-prob (ratio π/μ, clipped), an
on-policy one keeps TRL's anchor (ratio 1), and a batch without stale tokens is TRL's as is."""

from __future__ import annotations

import math

import pytest
import torch

from services.trainer.config import load_config
from services.trainer.rollout import Episode
from services.trainer.trl_batch import to_trl_batch

STEP = 3  # the policy version the batch trains
MU = -4.0  # the stale tokens' behaviour log-prob


def _episode(version: int, success: bool) -> Episode:
    """Two model tokens sampled by ``version``, an env token, one more model token."""
    versions = [version, version, -1, version]
    return Episode(
        task="click-test",
        seed=1,
        prompt_ids=[5, 6, 7],
        completion_ids=[11, 12, 13, 14],
        env_mask=[1, 1, 0, 1],
        logprobs=[MU, MU, 0.0, MU],
        token_versions=versions,
        policy_versions=[version, version],
        reward=float(success),
        outcome="success" if success else "failure",
        turns=2,
    )


@pytest.fixture
def trainer(tiny_chat_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.dataset import build_dataset
    from services.trainer.grpo import grpo_args
    from services.trainer.grpo_trainer import BrowserGRPOTrainer
    from services.trainer.rewards import build_rewards

    cfg = load_config(
        {
            "run": {"output_dir": str(tmp_path), "report_to": []},
            "model": {"source": str(tiny_chat_model)},
            "tasks": {"train": ["click-test"]},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}},
            "lora": {"enabled": False},
            "grpo": {"max_steps": 1, "prompts_per_step": 2, "num_generations": 2},
            "metrics": {"port": None},
        }
    )
    episodes: list[Episode] = []
    trainer = BrowserGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_chat_model),
        reward_funcs=build_rewards(cfg.rewards),
        args=grpo_args(cfg),
        train_dataset=build_dataset(cfg),
        processing_class=AutoTokenizer.from_pretrained(tiny_chat_model),
        rollout_func=lambda prompts, _: to_trl_batch(prompts, episodes, eos_id=2, version=STEP),
    )
    trainer.state.global_step = STEP
    trainer.current_gradient_accumulation_steps = 1  # set by TRL's loop when it trains
    trainer.model.train()
    trainer.episodes = episodes
    return trainer


def _batch(trainer, versions: list[int]) -> dict:
    # Each group has a success and a failure: non-zero advantages.
    trainer.episodes[:] = [_episode(v, success=i % 2 == 0) for i, v in enumerate(versions)]
    rows = [dict(trainer.train_dataset[i]) for i in (0, 0, 1, 1)]  # TRL writes into each
    return trainer._generate_and_score_completions(rows)


def test_a_stale_token_is_anchored_on_its_behaviour_logprob_an_on_policy_one_is_not(trainer):
    output = _batch(trainer, [STEP, STEP, STEP - 1, STEP - 1])
    current = trainer._current_logps(output)
    old = output["old_per_token_logps"]
    model_tokens = [0, 1, 3]
    # On-policy samples: the anchor is the policy being updated, so the ratio is exactly 1.
    assert torch.equal(old[:2], current[:2])
    # Stale samples: every model token is anchored on μ, so its ratio is π_θ/μ (clipped by TRL).
    assert old[2:, model_tokens].tolist() == [[MU] * 3] * 2
    ratio = torch.exp(current[2:, model_tokens] - old[2:, model_tokens])
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    # The env token carries no log-prob to correct with: it keeps the current anchor (masked).
    assert torch.equal(old[2:, 2], current[2:, 2])
    assert all(math.isfinite(x) for x in old.flatten().tolist())
    metrics = trainer._metrics["train"]
    assert metrics["off_policy/stale_token_fraction"][-1] == pytest.approx(0.5)


def test_the_correction_changes_the_loss_of_stale_samples_only(trainer):
    on_policy = _batch(trainer, [STEP] * 4)
    assert "old_per_token_logps" not in on_policy  # TRL's batch, untouched
    stale = _batch(trainer, [STEP, STEP, STEP - 1, STEP - 1])
    corrected = trainer.compute_loss(trainer.model, stale).item()
    trainer.correct_off_policy = False
    uncorrected_batch = _batch(trainer, [STEP, STEP, STEP - 1, STEP - 1])
    assert "old_per_token_logps" not in uncorrected_batch
    uncorrected = trainer.compute_loss(trainer.model, uncorrected_batch).item()
    assert corrected != pytest.approx(uncorrected)


def test_behaviour_logprobs_mark_only_tokens_an_older_version_sampled():
    batch = to_trl_batch(
        ["p", "p"], [_episode(STEP, True), _episode(STEP - 1, False)], eos_id=2, version=STEP
    )
    on_policy, stale = batch["behaviour_logprobs"]
    assert all(math.isnan(x) for x in on_policy)
    assert stale[:2] == [MU, MU] and math.isnan(stale[2]) and stale[3] == MU
    episodes = [_episode(STEP, True), _episode(STEP - 1, False)]
    unversioned = to_trl_batch(["p", "p"], episodes, eos_id=2)
    assert all(math.isnan(x) for row in unversioned["behaviour_logprobs"] for x in row)
