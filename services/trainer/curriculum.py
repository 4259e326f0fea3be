"""Which task each GRPO group trains on: round-robin, or at the edge of the policy's ability.

A GRPO group whose episodes all succeed (or all fail) has zero advantage and teaches nothing, yet
costs a full rollout and update. The ``learnability`` strategy (the task-selection half of WebRL's
curriculum) therefore draws each group's task with weight p(1 - p) + floor, where p is the
policy's recent success rate on that task: tasks it solves about half the time get most groups,
mastered and hopeless ones are only revisited (p is smoothed, so their weight never reaches 0),
so a regression still shows up.

p is the Laplace estimate (successes + 1) / (episodes + 2) over the task's last ``window``
training episodes; an unseen task starts at p = 0.5, the highest weight, so every task is tried
early. Dropped episodes (infrastructure failures) carry no evidence and are not counted. The
estimates live in memory: a resumed run re-learns them from its first steps.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from services.trainer.config import CurriculumConfig
from services.trainer.rollout import Episode, EpisodeRequest


class TaskCurriculum:
    """Assigns tasks to a step's groups and learns per-task success rates from their episodes."""

    def __init__(self, tasks: Sequence[str], config: CurriculumConfig, *, seed: int = 0) -> None:
        if not tasks:
            raise ValueError("the curriculum needs at least one task")
        self.config = config
        self._rng = random.Random(seed)
        self._outcomes: dict[str, deque[bool]] = {
            task: deque(maxlen=config.window) for task in tasks
        }

    def success_estimate(self, task: str) -> float:
        outcomes = self._outcomes[task]
        return (sum(outcomes) + 1) / (len(outcomes) + 2)

    def weights(self) -> dict[str, float]:
        """Each task's share of the next groups (sums to 1)."""
        if self.config.strategy == "round_robin":
            raw = {task: 1.0 for task in self._outcomes}
        else:
            raw = {
                task: (p := self.success_estimate(task)) * (1 - p) + self.config.floor
                for task in self._outcomes
            }
        total = sum(raw.values())
        return {task: w / total for task, w in raw.items()}

    def assign(self, requests: Sequence[EpisodeRequest]) -> list[EpisodeRequest]:
        """The step's requests with each group's task chosen; the dataset's seed is kept.

        Equal requests form one group (TRL repeats a dataset row ``num_generations`` times), so
        they get the same task. Round-robin keeps the dataset's (balanced) task.
        """
        if self.config.strategy == "round_robin":
            return list(requests)
        tasks, weights = zip(*self.weights().items(), strict=True)
        chosen: dict[EpisodeRequest, EpisodeRequest] = {}
        for request in requests:
            if request not in chosen:
                task = self._rng.choices(tasks, weights=weights)[0]
                chosen[request] = replace(request, task=task)
        return [chosen[r] for r in requests]

    def record(self, episodes: Sequence[Episode]) -> None:
        for episode in episodes:
            if not episode.dropped and episode.task in self._outcomes:
                self._outcomes[episode.task].append(episode.success)
