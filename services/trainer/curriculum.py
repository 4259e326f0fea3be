"""Which task each GRPO group trains on: round-robin, or at the edge of the policy's ability.

A GRPO group whose episodes all succeed (or all fail) has zero advantage and teaches nothing, yet
costs a full rollout and update. The ``learnability`` strategy (the task-selection half of WebRL's
curriculum) therefore draws each group's task with weight p(1 - p) + floor, where p is the
policy's recent success rate on that task: tasks it solves about half the time get most groups,
mastered and hopeless ones are only revisited (p is smoothed, so their weight never reaches 0),
so a regression still shows up.

p is the Laplace estimate (successes + 1) / (episodes + 2) over the task's last ``window``
training episodes; an unseen task starts at p = 0.5, the highest weight, so every task is tried
early. Dropped episodes (infrastructure failures) carry no evidence and are not counted.

A curriculum's state (outcomes and its random generator) is saved with every checkpoint
(``state_dict``), so a resumed run continues with the same task weights and draws.
``CURRICULA`` maps ``curriculum.type`` to the class; add one = a module with a ``Curriculum``
subclass + one line here + its config model in the ``CurriculumConfig`` union.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from services.common.registry import Registry
from services.trainer.rollout import Episode, EpisodeRequest


class Curriculum:
    """Assigns tasks to a step's groups and learns per-task success rates from their episodes.

    The base class keeps the dataset's task (round-robin) and the outcome windows every
    strategy reports as metrics; subclasses override ``raw_weights`` (and ``assign``).
    """

    window = 32

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        if not tasks:
            raise ValueError("the curriculum needs at least one task")
        self._rng = random.Random(seed)
        self._outcomes: dict[str, deque[bool]] = {task: deque(maxlen=self.window) for task in tasks}

    @classmethod
    def from_config(cls, config, *, tasks: Sequence[str], seed: int = 0) -> Curriculum:
        return cls(tasks, seed=seed)

    def success_estimate(self, task: str) -> float:
        outcomes = self._outcomes[task]
        return (sum(outcomes) + 1) / (len(outcomes) + 2)

    def raw_weights(self) -> dict[str, float]:
        return {task: 1.0 for task in self._outcomes}

    def weights(self) -> dict[str, float]:
        """Each task's share of the next groups (sums to 1)."""
        raw = self.raw_weights()
        total = sum(raw.values())
        return {task: w / total for task, w in raw.items()}

    def assign(self, requests: Sequence[EpisodeRequest]) -> list[EpisodeRequest]:
        """The step's requests with each group's task chosen (here: the dataset's)."""
        return list(requests)

    def add_tasks(self, tasks: Sequence[str]) -> None:
        """Tasks that join while training runs (generated ones): unseen, so p = 0.5 at first."""
        for task in tasks:
            self._outcomes.setdefault(task, deque(maxlen=self.window))

    def record(self, episodes: Sequence[Episode]) -> None:
        for episode in episodes:
            if not episode.dropped and episode.task in self._outcomes:
                self._outcomes[episode.task].append(episode.success)

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "outcomes": {task: list(window) for task, window in self._outcomes.items()},
            "rng": _rng_state_to_json(self._rng.getstate()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore outcomes of the tasks still trained (a task added since starts fresh)."""
        for task, outcomes in state.get("outcomes", {}).items():
            if task in self._outcomes:
                self._outcomes[task].clear()
                self._outcomes[task].extend(bool(o) for o in outcomes)
        if "rng" in state:
            self._rng.setstate(_rng_state_from_json(state["rng"]))


class LearnabilityCurriculum(Curriculum):
    """Each group's task drawn with weight p(1 - p) + floor (see the module docstring)."""

    def __init__(
        self, tasks: Sequence[str], *, window: int = 32, floor: float = 0.0, seed: int = 0
    ) -> None:
        self.window = window
        self.floor = floor
        super().__init__(tasks, seed=seed)

    @classmethod
    def from_config(cls, config, *, tasks: Sequence[str], seed: int = 0) -> Curriculum:
        return cls(tasks, window=config.window, floor=config.floor, seed=seed)

    def raw_weights(self) -> dict[str, float]:
        return {
            task: (p := self.success_estimate(task)) * (1 - p) + self.floor
            for task in self._outcomes
        }

    def assign(self, requests: Sequence[EpisodeRequest]) -> list[EpisodeRequest]:
        """Equal requests form one group (TRL repeats a dataset row ``num_generations`` times),
        so they get the same task; the dataset's seed is kept."""
        tasks, weights = zip(*self.weights().items(), strict=True)
        chosen: dict[EpisodeRequest, EpisodeRequest] = {}
        for request in requests:
            if request not in chosen:
                task = self._rng.choices(tasks, weights=weights)[0]
                chosen[request] = replace(request, task=task)
        return [chosen[r] for r in requests]


CURRICULA: Registry[Curriculum] = Registry(
    "curriculum",
    {
        "round_robin": "services.trainer.curriculum:Curriculum",
        "learnability": "services.trainer.curriculum:LearnabilityCurriculum",
    },
)


def build_curriculum(config, tasks: Sequence[str], seed: int = 0) -> Curriculum:
    """The curriculum for the ``curriculum`` section over the training tasks."""
    return CURRICULA.build(config, tasks=list(tasks), seed=seed)


def _rng_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return version, tuple(internal), gauss
