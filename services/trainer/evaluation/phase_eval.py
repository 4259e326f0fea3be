"""The live policy on held-out seeds at each phase start and at the end (``eval.phase_seeds``).

The final evaluation says where a run ended; WebRL's question is how each phase moved the policy,
on the tasks it trains on and on tasks it never saw. So at the start of training, at every phase
boundary (``grpo.phase_steps``; a resumed run starts a phase too) and after the last step, the
policy of that moment plays the first ``eval.phase_seeds`` held-out seeds of every evaluated task
under the evaluation protocol (greedy, ``eval.max_turns``), through training's own rollout stack:
the same env pods and generation backend, so an adapter pushed to the inference service is what
is measured (the push callback runs before this one). Its episodes are not training's: they reach
no reward, curriculum or training metric.

Each measurement is one ``phase_eval`` record in ``<run>/metrics.jsonl`` (per-task success, the
means over trained and held-out tasks; drawn by ``plots.py``) and the ``trainer_phase_eval_*``
series on ``/metrics``. A resumed run drops the records of steps after its checkpoint and measures
again where it resumes unless that step was measured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from transformers import TrainerCallback

from services.trainer.episode_log import StepRecords
from services.trainer.evaluation.report import EvalSettings, PolicyReport, score_episodes
from services.trainer.evaluation.run import eval_requests
from services.trainer.metrics import TrainerMetrics
from services.trainer.stack import RolloutProtocol, RolloutStack

log = logging.getLogger(__name__)

STAGE = "phase_eval"
"""The ``stage`` of these records in ``metrics.jsonl``."""


class PhaseEvaluation(TrainerCallback):
    """Measures the live policy at every phase start and at the end (see module docstring)."""

    def __init__(
        self,
        stack: RolloutStack,
        settings: EvalSettings,
        seeds_per_task: int,
        phase_steps: int,
        records: StepRecords,
        metrics: TrainerMetrics,
    ) -> None:
        self.stack = stack
        self.settings = replace(settings, seeds_per_task=seeds_per_task)
        self.phase_steps = phase_steps
        self.records = records
        self.metrics = metrics

    def on_train_begin(self, args, state, control, **kwargs):
        step = state.global_step
        self.records.rewind(step, stage=STAGE)
        measured = {r["step"] for r in self.records.read() if r.get("stage") == STAGE}
        if step not in measured:
            self.measure(step)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        boundary = self.phase_steps and step % self.phase_steps == 0
        # the end: the last step, or run.max_train_minutes (a SIGTERM stops after this callback,
        # not measured: the pod has its grace period to save in)
        if boundary or step >= state.max_steps or control.should_training_stop:
            self.measure(step)

    def measure(self, step: int) -> dict:
        """Play the held-out pages with the policy of ``step``; its record (also written)."""
        started = time.monotonic()
        self.metrics.phase_evaluation_started()
        requests = eval_requests(self.settings)
        episodes = self.stack.play(requests, protocol=RolloutProtocol.evaluation)
        scores, _ = score_episodes(episodes, self.settings.tasks)
        report = PolicyReport(f"step {step}", "", None, scores, time.monotonic() - started)
        record = {
            "stage": STAGE,
            "step": step,
            "time": time.time(),
            "trained": report.mean_over(self.settings.trained_tasks),
            "held_out": report.mean_over(self.settings.held_out_tasks),
            "episodes": sum(s.episodes for s in scores.values()),
            "dropped": sum(s.dropped for s in scores.values()),
            "seeds_per_task": self.settings.seeds_per_task,
            "wall_s": round(report.wall_s, 1),
        } | {f"success/{task}": score.success_rate for task, score in scores.items()}
        self.records.write([record])
        self.metrics.phase_evaluated(step, record["trained"], record["held_out"])
        log.info(
            "held-out seeds at step %d: trained tasks %s, held-out tasks %s "
            "(%d episodes, %d dropped, %.0f s)",
            step,
            _rate(record["trained"]),
            _rate(record["held_out"]),
            record["episodes"],
            record["dropped"],
            report.wall_s,
        )
        return record


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
