"""Reward sources, apart from the environment: each one scores finished episodes.

The config's ``rewards`` list (``[{type, weight, ...}]``) becomes TRL's ``reward_funcs`` and
``reward_weights``: TRL sums the weighted rewards per sample, then turns the sums into group
advantages. A source reads the per-episode facts the rollout returns beside the token ids
(``env_reward``, ``turns``, ``max_turns``, ``invalid_actions``, ``success``, ``task``, ``seed``,
``dropped``, and ``judge_input``: what an outcome reward model reads) and returns one float per
sample. Success (what evaluations and the step line count) is always the task's own verdict,
whatever the training reward.

A dropped sample (infrastructure failure) must not move its group: every source gives it the
mean of the played samples of its GRPO group (``group`` field), so its advantage is zero under
every source and the others' advantages are what they would be without it.

Add a source = a class here (or in its own module) with ``score`` (or a batched ``score_all``) + one
line in ``REWARDS`` + its config model in the ``RewardConfig`` union (services/trainer/config.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common.registry import Registry


class RewardSource:
    """A TRL reward function over episode facts; ``__name__`` names it in TRL's logs."""

    __name__ = "reward"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    @classmethod
    def from_config(cls, config, **_context: Any) -> RewardSource:
        return cls(weight=config.weight)

    def score(self, facts: dict[str, Any]) -> float:
        raise NotImplementedError

    def score_all(self, facts: Sequence[dict[str, Any]]) -> list[float]:
        """Every played sample's score; a source that batches (a model judge) overrides this."""
        return [self.score(f) for f in facts]

    def __call__(self, completions: Sequence[Any] | None = None, **fields: Any) -> list[float]:
        count = len(fields["env_reward"])
        keys = [k for k, v in fields.items() if isinstance(v, list) and len(v) == count]
        dropped = fields.get("dropped") or [False] * count
        groups = fields.get("group") or list(range(count))
        played_at = [i for i in range(count) if not dropped[i]]
        played_scores = self.score_all([{k: fields[k][i] for k in keys} for i in played_at])
        scores: list[float | None] = [None] * count
        for i, score in zip(played_at, played_scores, strict=True):
            scores[i] = score
        played: dict[Any, list[float]] = {}
        for group, score in zip(groups, scores, strict=True):
            if score is not None:
                played.setdefault(group, []).append(score)
        means = {group: sum(v) / len(v) for group, v in played.items()}
        return [
            score if score is not None else means.get(group, 0.0)
            for group, score in zip(groups, scores, strict=True)
        ]


class TaskReward(RewardSource):
    """The env's task reward: the task's own checker (MiniWoB's JavaScript, a page's check)."""

    __name__ = "task"

    def score(self, facts: dict[str, Any]) -> float:
        return float(facts["env_reward"])


class InvalidActionPenalty(RewardSource):
    """-(invalid actions / actions): replies that hold no valid action cost reward."""

    __name__ = "invalid_action"

    def score(self, facts: dict[str, Any]) -> float:
        return -facts["invalid_actions"] / max(facts["turns"], 1)


class TurnCost(RewardSource):
    """-(turns / the task's turn cap): the same outcome in fewer actions scores higher."""

    __name__ = "turn_cost"

    def score(self, facts: dict[str, Any]) -> float:
        return -facts["turns"] / max(facts["max_turns"], 1)


REWARDS: Registry[RewardSource] = Registry(
    "reward source",
    {
        "task": "services.trainer.rewards:TaskReward",
        "invalid_action": "services.trainer.rewards:InvalidActionPenalty",
        "turn_cost": "services.trainer.rewards:TurnCost",
        "orm": "services.trainer.orm.reward:OrmReward",
    },
)


def build_rewards(configs: Sequence, **context: Any) -> list[RewardSource]:
    """The ``rewards`` list of the config, built (TRL takes them with their ``weight``s);
    ``context`` (``metrics``, ``cache_dir``) reaches the sources that use it."""
    return [REWARDS.build(config, **context) for config in configs]
