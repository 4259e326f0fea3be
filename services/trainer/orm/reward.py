"""The ``orm`` reward source: a learned judge's verdict instead of the task's checker.

On the tasks it is given (``tasks``; all when empty) the reward is the ORM's verdict on the
episode (1 for YES, 0 for NO; or its YES probability with ``output: score``); the other tasks
keep their checker's reward, so one run can mix judged and checked tasks. Success, as the step
line and evaluations count it, stays the checker's verdict: that is what shows how much of the
learning survives a judge.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from fnmatch import fnmatch
from typing import Any

from services.trainer.orm.prompt import JudgeInput
from services.trainer.rewards import RewardSource


class OrmReward(RewardSource):
    __name__ = "orm"

    def __init__(
        self,
        scorer,
        *,
        tasks: Sequence[str] = (),
        output: str = "verdict",
        weight: float = 1.0,
        metrics=None,
    ) -> None:
        super().__init__(weight)
        self.scorer = scorer
        self.tasks = tuple(tasks)
        self.output = output
        self.metrics = metrics

    @classmethod
    def from_config(cls, config, *, metrics=None, cache_dir=None, **_context: Any) -> OrmReward:
        if config.server:
            from services.trainer.orm.remote import RemoteOrmScorer

            scorer = RemoteOrmScorer.from_config(config, cache_dir=cache_dir)
        else:
            from services.trainer.orm.scorer import OrmScorer

            scorer = OrmScorer.load(
                config.model,
                cache_dir=cache_dir,
                page_tokens=config.page_tokens,
                batch_size=config.batch_size,
            )
        return cls(
            scorer,
            tasks=config.tasks,
            output=config.output,
            weight=config.weight,
            metrics=metrics,
        )

    def judged(self, task: str) -> bool:
        """Whether the ORM scores ``task`` (a listed name or pattern; every task when none)."""
        return not self.tasks or any(fnmatch(task, pattern) for pattern in self.tasks)

    def score_all(self, facts: Sequence[dict[str, Any]]) -> list[float]:
        """One batched judgement of every judged episode; the checker's reward elsewhere."""
        judged = [i for i, f in enumerate(facts) if self.judged(f["task"])]
        inputs: list[JudgeInput] = [facts[i]["judge_input"] for i in judged]
        started = time.perf_counter()
        scores = self.scorer.scores(inputs) if inputs else []
        if self.metrics is not None and inputs:
            self.metrics.orm_judged(scores, time.perf_counter() - started)
        out = [float(f["env_reward"]) for f in facts]
        for i, score in zip(judged, scores, strict=True):
            out[i] = score if self.output == "score" else float(score >= 0.5)
        return out
