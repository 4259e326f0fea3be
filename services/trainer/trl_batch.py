"""Episodes → what TRL's ``rollout_func`` returns: token ids, logprobs, env mask, and the
per-episode facts the reward sources read (``services/trainer/rewards.py``).

A sample whose episode was dropped after repeated infrastructure failures cannot be removed
(TRL's group shapes are fixed), so it is neutralised instead: its tokens are all masked (no
gradient) and every reward source scores it with its group's mean over the played episodes, so
its advantage is zero and it shifts no other sample's advantage. It is counted, never scored as
a failure.

``judge_input`` is what an outcome reward model reads of the episode (goal, annotated actions,
final page; ``services/trainer/orm/``).

``behaviour_logprobs`` marks the tokens the off-policy correction reweights
(``grpo_trainer.py``): per completion token, the log-prob its sampler returned where an older
policy version than the one being trained sampled it; NaN where the token is on-policy, the
env's, or came without a log-prob.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from services.trainer.orm.prompt import from_episode
from services.trainer.rollout import Episode

#: Per-episode facts beside the tokens (TRL passes them to the reward functions).
FACT_FIELDS = (
    "env_reward",
    "task",
    "seed",
    "group",
    "success",
    "turns",
    "max_turns",
    "invalid_actions",
    "infra_retries",
    "dropped",
    "judge_input",
)


def to_trl_batch(
    prompts: Sequence[Any],
    episodes: Sequence[Episode],
    eos_id: int,
    max_turns: Callable[[str], int] = lambda _task: 0,
    version: int | None = None,
) -> dict[str, list]:
    """The ``rollout_func`` output for ``episodes`` (one per dataset prompt, groups consecutive);
    ``version`` is the policy version the batch trains (None: every token counts as on-policy)."""
    group_of = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompts))}
    group_rewards: dict[Any, list[float]] = {}
    group_prompt_ids: dict[Any, list[int]] = {}
    for prompt, ep in zip(prompts, episodes, strict=True):
        if not ep.dropped:
            group_rewards.setdefault(prompt, []).append(ep.reward)
            group_prompt_ids.setdefault(prompt, ep.prompt_ids)
    out: dict[str, list] = {
        key: []
        for key in (
            "prompt_ids", "completion_ids", "logprobs", "env_mask", "behaviour_logprobs",
            *FACT_FIELDS,
        )
    }  # fmt: skip
    for prompt, ep in zip(prompts, episodes, strict=True):
        if ep.dropped:
            rewards = group_rewards.get(prompt, [0.0])
            reward = sum(rewards) / len(rewards)
            prompt_ids = group_prompt_ids.get(prompt, [eos_id])
            completion, logprobs, mask = [eos_id], [0.0], [0]
            behaviour = [math.nan]
        else:
            reward, prompt_ids = ep.reward, ep.prompt_ids
            completion, logprobs, mask = ep.completion_ids, ep.logprobs, ep.env_mask
            behaviour = _behaviour_logprobs(ep, version)
        out["prompt_ids"].append(list(prompt_ids))
        out["completion_ids"].append(list(completion))
        out["logprobs"].append(list(logprobs))
        out["env_mask"].append(list(mask))
        out["behaviour_logprobs"].append(behaviour)
        out["env_reward"].append(reward)
        out["task"].append(ep.task)
        out["seed"].append(ep.seed)
        out["group"].append(group_of[prompt])
        out["success"].append(ep.success)
        out["turns"].append(ep.turns)
        out["max_turns"].append(max_turns(ep.task))
        out["invalid_actions"].append(ep.invalid_actions)
        out["infra_retries"].append(ep.infra_retries)
        out["dropped"].append(ep.dropped)
        out["judge_input"].append(None if ep.dropped else from_episode(ep))
    return out


def _behaviour_logprobs(ep: Episode, version: int | None) -> list[float]:
    """The sampler's log-prob of each token an older version than ``version`` sampled, NaN
    elsewhere (see the module docstring)."""
    if version is None or not ep.token_versions:  # not asked, or no sampler recorded
        return [math.nan] * len(ep.logprobs)
    return [
        logprob if 0 <= sampled < version and not math.isnan(logprob) else math.nan
        for logprob, sampled in zip(ep.logprobs, ep.token_versions, strict=True)
    ]
