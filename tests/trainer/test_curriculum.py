"""The task curriculum: groups keep one task, learnable tasks get the groups, evidence is honest."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from services.trainer.config import (
    LearnabilityCurriculumConfig,
    RoundRobinCurriculumConfig,
    load_config,
)
from services.trainer.curriculum import CURRICULA, build_curriculum
from services.trainer.rollout import Episode, EpisodeRequest

TASKS = ["click-test", "click-button", "focus-text-2"]


def _episodes(task: str, successes: int, failures: int) -> list[Episode]:
    return [
        Episode(
            task, i, reward=float(i < successes), outcome="success" if i < successes else "failure"
        )
        for i in range(successes + failures)
    ]


def _step(seeds: range, group: int = 4) -> list[EpisodeRequest]:
    """A step as TRL hands it over: each dataset row repeated ``group`` times."""
    return [EpisodeRequest("click-test", s) for s in seeds for _ in range(group)]


def test_round_robin_plays_the_dataset_as_it_is():
    curriculum = build_curriculum(RoundRobinCurriculumConfig(), TASKS)
    requests = _step(range(3))
    assert curriculum.assign(requests) == requests


def test_learnability_gives_each_group_one_task_and_keeps_its_seed():
    curriculum = build_curriculum(LearnabilityCurriculumConfig(), TASKS, seed=1)
    requests = _step(range(50))
    assigned = curriculum.assign(requests)
    assert [r.seed for r in assigned] == [r.seed for r in requests]
    for g in range(0, len(assigned), 4):
        assert len({r.task for r in assigned[g : g + 4]}) == 1
    assert {r.task for r in assigned} == set(TASKS)  # unseen tasks all start at p = 0.5


def test_learnability_sends_groups_where_rewards_differ():
    curriculum = build_curriculum(LearnabilityCurriculumConfig(), TASKS, seed=0)
    curriculum.record(_episodes("click-test", 32, 0))  # mastered
    curriculum.record(_episodes("click-button", 0, 32))  # hopeless for now
    curriculum.record(_episodes("focus-text-2", 16, 16))  # at the edge

    weights = curriculum.weights()
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["focus-text-2"] > 4 * weights["click-test"] > 0
    assert weights["click-test"] == pytest.approx(weights["click-button"])
    drawn = Counter(r.task for r in curriculum.assign(_step(range(400), group=1)))
    assert drawn["focus-text-2"] > drawn["click-test"] + drawn["click-button"]


def test_the_window_forgets_old_outcomes_and_dropped_episodes_count_for_nothing():
    curriculum = build_curriculum(LearnabilityCurriculumConfig(window=4), ["click-test"])
    curriculum.record(_episodes("click-test", 0, 4))
    curriculum.record([Episode("click-test", 9, outcome="dropped")] * 10)
    assert curriculum.success_estimate("click-test") == pytest.approx(1 / 6)
    curriculum.record(_episodes("click-test", 4, 0))
    assert curriculum.success_estimate("click-test") == pytest.approx(5 / 6)


def test_an_unknown_strategy_fails_at_load_with_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"curriculum: Input tag 'hardest-first'"):
        load_config(
            {
                "model": {"source": str(tmp_path)},
                "tasks": {"train": ["click-test"]},
                "env": {"discovery": {"endpoints": ["http://x:1"]}},
                "grpo": {"max_steps": 1},
                "curriculum": {"type": "hardest-first"},
            }
        )


def test_a_resumed_curriculum_continues_with_the_same_weights_and_draws():
    """Its state goes into every checkpoint: a resumed run picks up where it stopped."""
    before = build_curriculum(LearnabilityCurriculumConfig(), TASKS, seed=3)
    before.record(_episodes("click-test", 30, 2))
    before.record(_episodes("focus-text-2", 10, 12))
    before.assign(_step(range(5)))  # the generator moves on
    state = json.loads(json.dumps(before.state_dict()))  # as saved in checkpoint-N/

    resumed = build_curriculum(LearnabilityCurriculumConfig(), TASKS, seed=3)
    resumed.load_state_dict(state)
    assert resumed.weights() == before.weights()
    assert resumed.assign(_step(range(20))) == before.assign(_step(range(20)))


def test_every_curriculum_type_has_a_registry_entry():
    from services.trainer.config import CurriculumConfig, union_types

    assert union_types(CurriculumConfig) == set(CURRICULA.names())
