"""The GRPO dataset: one row per GRPO group, a task page (task + seed) as a small JSON prompt.

TRL repeats each row ``num_generations`` times and hands the step's rows to the rollout
function, which plays every repetition as one env episode of that page.
"""

from __future__ import annotations

import json
import random
from typing import Any

from services.trainer.config import TrainerConfig
from services.trainer.rollout import EpisodeRequest


def episode_prompt(request: EpisodeRequest) -> str:
    """The dataset ``prompt`` of a task page: a small JSON object (TRL carries it as text)."""
    return json.dumps({"task": request.task, "seed": request.seed}, sort_keys=True)


def parse_episode_prompt(prompt: Any) -> EpisodeRequest:
    try:
        data = json.loads(prompt)
        return EpisodeRequest(task=str(data["task"]), seed=int(data["seed"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"dataset prompt {prompt!r} is not a task page {{task, seed}}") from exc


def training_requests(cfg: TrainerConfig, count: int) -> list[EpisodeRequest]:
    """``count`` task pages: tasks round-robin (balanced), seeds drawn from the training range."""
    rng = random.Random(cfg.run.seed)
    tasks = cfg.tasks.names
    start, size = cfg.tasks.seed_start, cfg.tasks.seed_count
    return [
        EpisodeRequest(task=tasks[i % len(tasks)], seed=start + rng.randrange(size))
        for i in range(count)
    ]


def build_dataset(cfg: TrainerConfig):
    """A ``datasets.Dataset`` of ``max_steps × prompts_per_step`` task pages."""
    from datasets import Dataset

    count = cfg.grpo.max_steps * cfg.grpo.prompts_per_step
    return Dataset.from_dict({"prompt": [episode_prompt(r) for r in training_requests(cfg, count)]})
