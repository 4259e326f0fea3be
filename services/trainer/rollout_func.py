"""TRL's ``rollout_func``: each step's task pages played as env episodes on the rollout stack.

TRL hands over the step's prompts already repeated ``num_generations`` times (one dataset row per
GRPO sample, groups consecutive); the curriculum picks each group's task, the stack plays every
sample as one episode, and ``trl_batch`` turns the episodes into token ids, logprobs, the env mask
and the facts the reward sources score.

Under several trainer processes (``distributed.py``), ``ShardedRollout`` is TRL's ``rollout_func``
on every rank: rank 0 plays the whole step through its ``BrowserRollout``, each rank gets back
the episodes of the prompts TRL gave it.

A rollout in which every episode was dropped (inference server restarting, no env pod reachable)
is never handed to TRL: that would be an optimizer step on nothing. It is replayed after a
back-off until ``env.wait_for_endpoint_s`` has passed, then training stops with the reasons.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from services.trainer import distributed
from services.trainer.config import TrainerConfig
from services.trainer.curriculum import Curriculum
from services.trainer.dataset import parse_episode_prompt
from services.trainer.distributed import World
from services.trainer.episode_log import EpisodeLog
from services.trainer.frames import FrameWriter
from services.trainer.generation.base import SamplingParams, wait_until_ready
from services.trainer.metrics import TrainerMetrics
from services.trainer.progress import StepStats
from services.trainer.replay import ReplayBuffer
from services.trainer.rollout import Episode, EpisodeRequest
from services.trainer.stack import RolloutStack
from services.trainer.task_generation import TaskGeneration
from services.trainer.trajectories import TrajectoryWriter
from services.trainer.trl_batch import to_trl_batch
from services.trainer.trl_compat import log_step_metrics

log = logging.getLogger(__name__)

#: First back-off after an all-dropped rollout (doubling, at most 60 s).
EMPTY_ROLLOUT_BACKOFF_S = 5.0


class RolloutStalledError(RuntimeError):
    """No episode of a step could be played for longer than ``env.wait_for_endpoint_s``."""


@dataclass
class _Rollout:
    """One step's episodes being played, possibly ahead of the step that trains on them."""

    requests: list[EpisodeRequest]
    frames: FrameWriter | None
    started: float
    idle_before: float
    """Seconds no rollout was being played before this one started (generation idle)."""
    future: Future[list[Episode]]
    finished: float | None = None


def task_generation(
    cfg: TrainerConfig, stack: RolloutStack, curriculum: Curriculum, metrics: TrainerMetrics
) -> TaskGeneration:
    """The curriculum's task generation, playing and writing with this rollout's stack."""
    config = cfg.task_generation
    sampling = SamplingParams(max_new_tokens=48, temperature=config.lm_temperature, stop=("\n",))
    judge = None
    if config.judge is not None:
        from services.trainer.orm.prompt import from_episode
        from services.trainer.orm.scorer import OrmScorer

        scorer = OrmScorer.load(config.judge, cache_dir=cfg.model.cache_dir.expanduser())

        def judge(episodes: list[Episode]) -> list[bool]:
            return [s >= 0.5 for s in scorer.scores([from_episode(e) for e in episodes])]

    return TaskGeneration(
        config,
        cfg.task_pool_folder,
        play=stack.play,
        serve=stack.serve,
        add_tasks=curriculum.add_tasks,
        write=lambda texts: stack.complete(texts, sampling),
        judge=judge,
        seed=cfg.run.seed,
        metrics=metrics,
    )


class BrowserRollout:
    """TRL ``rollout_func`` (see the module docstring).

    With ``rollout.max_staleness`` k > 0 it plays k steps ahead: each call returns the episodes
    started k calls earlier and starts the next step's on this call's pages (TRL's prompts are
    ``{task, seed}`` pages and the curriculum picks each group's task anyway, so they shift by k
    steps; the first call plays its own and then fills the queue). Those episodes are generated
    while the trainer updates and pushes, by the policy k versions (or fewer) behind the one
    that trains on them; their versions travel per token to the update, which corrects for them
    (``grpo_trainer.py``). k = 0 is the synchronous loop: every step waits for its own rollout.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        stack: RolloutStack,
        curriculum: Curriculum,
        metrics: TrainerMetrics,
        eos_id: int,
        replay: ReplayBuffer | None = None,
    ) -> None:
        self.cfg = cfg
        self.stack = stack
        self.curriculum = curriculum
        self.metrics = metrics
        self.eos_id = eos_id
        self.replay = replay
        self.last = StepStats()
        self.episode_log = (
            EpisodeLog(cfg.run.output_dir / "episodes.jsonl") if cfg.run.log_episodes else None
        )
        self.trajectories = (
            TrajectoryWriter(cfg.run.output_dir / "trajectories" / "training")
            if cfg.run.save_trajectories
            else None
        )
        self._ahead: deque[_Rollout] = deque()
        self._latest: _Rollout | None = None
        self.task_generation = (
            task_generation(cfg, stack, curriculum, metrics)
            if cfg.task_generation.enabled
            else None
        )

    def __call__(self, prompts: list[Any], trainer) -> dict:
        step = trainer.state.global_step
        self.metrics.set_policy_version(step)
        called = time.perf_counter()
        if not self._ahead:
            self._ahead.append(self._start(prompts, step))
        rollout = self._ahead.popleft()
        episodes = self._finish(rollout)
        waited = time.perf_counter() - called
        while len(self._ahead) < self.cfg.rollout.max_staleness:
            self._ahead.append(self._start(prompts, step + len(self._ahead) + 1))
        seconds = (rollout.finished or time.perf_counter()) - rollout.started
        self.curriculum.record(episodes)
        if self.task_generation is not None:
            self.task_generation.observe(episodes)
        self.last = StepStats.of(episodes, seconds, waited, rollout.idle_before)
        self.metrics.rollout_done(episodes, self.last)
        weights = self.curriculum.weights()
        self.metrics.curriculum_weights(weights)
        curriculum = {f"curriculum/{task}": weight for task, weight in weights.items()}
        log_step_metrics(trainer, self.last.trl_metrics() | curriculum | _staleness(episodes, step))
        if self.episode_log is not None:
            frames = rollout.frames
            index = [frames.write(e) for e in episodes] if frames is not None else []
            self.episode_log.append(step + 1, episodes, index)
        if self.trajectories is not None:
            self.trajectories.add(self.stack.records(episodes, "training", step))
            self.trajectories.flush()
        if self.replay is not None:
            self.replay.add(
                self.stack.records([e for e in episodes if e.success], "training", step)
            )
        return to_trl_batch(prompts, episodes, self.eos_id, self.cfg.tasks.turns_for, step)

    def _start(self, prompts: list[Any], trains_at: int) -> _Rollout:
        """Start playing a rollout for the step ``trains_at`` (the curriculum picks its tasks
        now; frames are taken when that step is one that keeps them)."""
        requests = self.curriculum.assign([parse_episode_prompt(p) for p in prompts])
        every = self.cfg.run.frames_every_steps
        frames = None
        if every is not None and (trains_at + 1) % every == 0:
            frames = FrameWriter(self.cfg.run.output_dir, f"frames/step-{trains_at + 1}")
            requests = [replace(r, frames=True) for r in requests]
        now = time.perf_counter()
        played = [r for r in (self._latest, *self._ahead) if r is not None]
        finished = [r.finished for r in played if r.finished is not None]
        idle = now - max(finished) if played and len(finished) == len(played) else 0.0
        rollout = _Rollout(requests, frames, now, max(idle, 0.0), self.stack.start(requests))
        rollout.future.add_done_callback(lambda _: _finished(rollout))
        self._latest = rollout
        return rollout

    def _finish(self, rollout: _Rollout) -> list[Episode]:
        """The rollout's episodes, waited for; one in which every episode was dropped is
        played again (``play_some``)."""
        episodes = rollout.future.result()
        if any(not e.dropped for e in episodes):
            return episodes
        episodes = self.play_some(rollout.requests, episodes)
        rollout.finished = time.perf_counter()
        return episodes

    def play_some(
        self, requests: list[EpisodeRequest], episodes: list[Episode] | None = None
    ) -> list[Episode]:
        """Play the requests (``episodes``: a first result already played); replay the whole
        rollout while every episode was dropped."""
        deadline = time.monotonic() + self.cfg.env.wait_for_endpoint_s
        delay = EMPTY_ROLLOUT_BACKOFF_S
        while True:
            if episodes is None:
                episodes = self.stack.play(requests)
            if any(not e.dropped for e in episodes):
                return episodes
            reasons = sorted({str(e.drop_reason).split(":")[0] for e in episodes})
            if all(str(e.drop_reason).startswith("task_error") for e in episodes):
                raise RolloutStalledError(
                    f"every task of the step is broken on the env pods: {episodes[0].drop_reason}"
                )
            if time.monotonic() + delay > deadline:
                raise RolloutStalledError(
                    f"no episode could be played for {self.cfg.env.wait_for_endpoint_s:.0f} s "
                    f"(last drop reasons: {reasons}); no optimizer step was taken"
                )
            log.warning(
                "every episode of the rollout was dropped (%s): no optimizer step on nothing; "
                "playing it again in %.0f s",
                reasons,
                delay,
            )
            time.sleep(delay)
            self.stack.loop.run(wait_until_ready(self.stack.backend))
            delay = min(delay * 2, 60.0)
            episodes = None

    def close(self) -> None:
        """Cancel the rollouts played ahead (their episodes are lost: harmless), then close."""
        while self._ahead:
            self._ahead.popleft().future.cancel()
        if self.task_generation is not None:
            self.task_generation.finish()
        self.stack.close()


def _finished(rollout: _Rollout) -> None:
    rollout.finished = time.perf_counter()


def _staleness(episodes: list[Episode], step: int) -> dict[str, float]:
    """How many updates behind the policy being trained the sampled turns were (0 when the
    trainer generates itself; a served policy may lag a push; up to ``rollout.max_staleness``
    when rollouts run ahead)."""
    lags = [step - v for e in episodes for v in e.policy_versions]
    if not lags:
        return {}
    return {"rollout/max_staleness": max(lags), "rollout/staleness_mean": sum(lags) / len(lags)}


class ShardedRollout:
    """TRL ``rollout_func`` on each of several trainer processes: every rank's prompts are
    gathered on rank 0 in rank order (TRL's sampler gives rank r the r-th block of the step's
    generation batch, so this is the step's own order), rank 0 plays them all through ``inner``
    (one env pool, one curriculum: a group split over two ranks stays one task), and each rank
    receives its own block. A rollout that fails on rank 0 fails on every rank."""

    def __init__(self, inner: BrowserRollout | None, world: World) -> None:
        if world.main != (inner is not None):
            raise ValueError("ShardedRollout: rank 0, and only rank 0, plays the episodes")
        self.inner = inner
        self.world = world

    def __call__(self, prompts: list[Any], trainer) -> dict:
        blocks = distributed.gather(list(prompts), self.world)
        parts: list[dict | str] | None = None
        if self.inner is not None and blocks is not None:
            try:
                batch = self.inner([p for block in blocks for p in block], trainer)
                parts = _split(batch, [len(block) for block in blocks])
            except Exception as exc:
                parts = [f"{type(exc).__name__}: {exc}"] * self.world.size
                distributed.scatter(parts, self.world)
                raise
        part = distributed.scatter(parts, self.world)
        if isinstance(part, str):
            raise RolloutStalledError(f"rank 0's rollout failed: {part}")
        return part

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def _split(batch: dict[str, list], sizes: list[int]) -> list[dict | str]:
    """``batch`` cut into consecutive blocks of ``sizes`` samples (one per rank)."""
    parts: list[dict | str] = []
    start = 0
    for size in sizes:
        parts.append({key: values[start : start + size] for key, values in batch.items()})
        start += size
    return parts
