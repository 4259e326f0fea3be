"""What a training run shows while it runs: per-step rollout figures and the one-line summary.

``StepStats`` summarises one rollout; ``StepLine`` replaces TRL's raw log dict with a progress bar
and one line per step, feeds the trainer's gauges, enforces ``run.max_train_minutes`` and asks for
a checkpoint at the end; ``MetricsLog`` keeps every logged step in ``<run>/metrics.jsonl`` for the
run's plots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback

from services.trainer.episode_log import StepRecords
from services.trainer.metrics import TrainerMetrics
from services.trainer.rollout import Episode

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
"""In the run folder: every logged step of every stage (``MetricsLog``)."""


@dataclass
class StepStats:
    """What the last rollout did; printed per step and logged with TRL's metrics."""

    episodes: int = 0
    dropped: int = 0
    success_rate: float = 0.0
    turns_mean: float = 0.0
    invalid_rate: float = 0.0
    infra_retries: int = 0
    seconds: float = 0.0
    """From the rollout's start to its last episode."""
    wait_seconds: float = 0.0
    """How long the trainer waited for it (less than ``seconds`` when it was played ahead)."""
    idle_seconds: float = 0.0
    """How long generation had no rollout to play before this one started (the update and the
    policy push, when nothing runs ahead)."""
    episodes_per_second: float = 0.0
    tokens_per_second: float = 0.0
    by_task: dict[str, tuple[int, int]] = field(default_factory=dict)
    """task -> (successes, played episodes), in first-seen order."""

    @classmethod
    def of(
        cls,
        episodes: Sequence[Episode],
        seconds: float,
        wait_seconds: float | None = None,
        idle_seconds: float = 0.0,
    ) -> StepStats:
        played = [e for e in episodes if not e.dropped]
        n = max(len(played), 1)
        actions = sum(len(e.actions) for e in played)
        by_task: dict[str, tuple[int, int]] = {}
        for e in played:
            wins, total = by_task.get(e.task, (0, 0))
            by_task[e.task] = (wins + e.success, total + 1)
        return cls(
            episodes=len(played),
            dropped=len(episodes) - len(played),
            success_rate=sum(e.success for e in played) / n,
            turns_mean=sum(e.turns for e in played) / n,
            invalid_rate=sum(e.invalid_actions for e in played) / max(actions, 1),
            infra_retries=sum(e.infra_retries for e in episodes),
            seconds=seconds,
            wait_seconds=seconds if wait_seconds is None else wait_seconds,
            idle_seconds=idle_seconds,
            episodes_per_second=len(played) / seconds if seconds > 0 else 0.0,
            tokens_per_second=sum(e.generated_tokens for e in played) / seconds
            if seconds > 0
            else 0.0,
            by_task=by_task,
        )

    def task_summary(self) -> str:
        """``click-test 4/4 click-link 1/4``: what the step's groups had to learn from."""
        return " ".join(f"{task} {wins}/{total}" for task, (wins, total) in self.by_task.items())

    def trl_metrics(self) -> dict[str, float]:
        """The ``rollout/*`` columns added to TRL's per-step log."""
        return {
            "rollout/success_rate": self.success_rate,
            "rollout/episode_turns": self.turns_mean,
            "rollout/invalid_action_rate": self.invalid_rate,
            "rollout/dropped": self.dropped,
            "rollout/infra_retries": self.infra_retries,
            "rollout/seconds": self.seconds,
            "rollout/wait_seconds": self.wait_seconds,
            "rollout/generation_idle_seconds": self.idle_seconds,
            "rollout/episodes_per_second": self.episodes_per_second,
            "rollout/tokens_per_second": self.tokens_per_second,
            **{f"success/{task}": wins / n for task, (wins, n) in self.by_task.items()},
        }


class StepLine(ProgressCallback):
    """The progress bar plus one compact line per step instead of the raw log dict."""

    def __init__(
        self,
        last_rollout,
        metrics: TrainerMetrics,
        every: int = 1,
        max_minutes: float | None = None,
        report: Callable[[Mapping[str, float]], None] | None = None,
    ) -> None:
        super().__init__()
        self.report = report  # figures for TRL's per-step log (trl_compat.log_step_metrics)
        self.max_minutes = max_minutes
        self.deadline: float | None = None
        self._last_rollout = last_rollout  # () -> StepStats of the step's rollout
        self.metrics = metrics
        self.every = every
        self._step_start = 0.0
        self._train_start = 0.0
        self._first_step = 0
        self.update_seconds = 0.0
        self.lines: list[str] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.max_minutes is not None:
            self.deadline = time.monotonic() + self.max_minutes * 60
        self._train_start, self._first_step = time.monotonic(), state.global_step
        self.metrics.training_started(state.global_step)
        return super().on_train_begin(args, state, control, **kwargs)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()
        return super().on_step_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        total = time.perf_counter() - self._step_start
        self.update_seconds = max(total - self._last_rollout().wait_seconds, 0.0)
        self.metrics.update_done(state.global_step, self.update_seconds, {})
        if self.report is not None:
            self.report({"update/seconds": self.update_seconds})
        over_budget = self.deadline is not None and time.monotonic() > self.deadline
        if over_budget and not control.should_training_stop:
            log.info("run.max_train_minutes reached after step %d: stopping", state.global_step)
            control.should_training_stop = True
        if over_budget or (state.max_steps and state.global_step >= state.max_steps):
            control.should_save = True  # a checkpoint at the end, beside every save_steps
        return super().on_step_end(args, state, control, **kwargs)

    def _eta(self, state) -> str:
        """Time left at the mean step time of this run so far (for a step-budgeted run)."""
        done = state.global_step - self._first_step
        if done <= 0 or not state.max_steps:
            return "?"
        left = (time.monotonic() - self._train_start) / done * (state.max_steps - state.global_step)
        return f"{left / 60:.0f}m" if left >= 60 else f"{left:.0f}s"

    def on_train_end(self, args, state, control, **kwargs):
        self.metrics.training_ended()
        return super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        for key, gauge in (
            ("loss", self.metrics.loss),
            ("kl", self.metrics.kl),
            ("grad_norm", self.metrics.grad_norm),
            ("replay_nll", self.metrics.replay_nll),
            ("replay_pool", self.metrics.replay_pool),
        ):
            if isinstance(logs.get(key), (int, float)):
                gauge.set(logs[key])
        if "loss" not in logs or state.global_step % self.every:
            return
        s = self._last_rollout()
        line = (
            f"step {state.global_step}/{state.max_steps} | {time.strftime('%H:%M:%S')} | "
            f"reward {logs.get('reward', 0.0):.2f} | "
            f"success {s.success_rate:.2f} | turns {s.turns_mean:.1f} | "
            f"invalid {s.invalid_rate:.2f} | rollout {s.seconds:.1f}s "
            f"({s.episodes_per_second:.2f} ep/s"
            + (f", waited {s.wait_seconds:.1f}s" if s.wait_seconds < s.seconds - 0.05 else "")
            + f") | update {self.update_seconds:.1f}s | "
            f"loss {logs.get('loss', 0.0):.4f} | kl {logs.get('kl', 0.0):.4f}"
            + (
                f" | replay {logs['replay_samples']:.0f} of {logs.get('replay_pool', 0):.0f} "
                f"(nll {logs.get('replay_nll', 0.0):.3f})"
                if "replay_samples" in logs
                else ""
            )
            + (f" | dropped {s.dropped} retries {s.infra_retries}" if s.infra_retries else "")
            + (f" | {s.task_summary()}" if s.by_task else "")
            + f" | eta {self._eta(state)}"
        )
        self.lines.append(line)
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


class MetricsLog(TrainerCallback):
    """``<run>/metrics.jsonl``: one record per logged step of a stage (TRL's figures and ours:
    loss, KL, per-task success, curriculum weights, timings), written as the run goes, read by
    the run's plots. A resumed stage first drops its records of steps after the checkpoint."""

    def __init__(self, path: Path, stage: str) -> None:
        self.records = StepRecords(path)
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        self.records.rewind(state.global_step, stage=self.stage)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            record = {"stage": self.stage, "step": state.global_step, "time": time.time()}
            self.records.write([record | logs])
