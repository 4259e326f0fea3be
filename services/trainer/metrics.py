"""The trainer's Prometheus series and the rollout observer feeding them.

Series live in their own registry so tests and several trainers in one process never collide;
``serve`` exposes it (plus process metrics) at ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.trainer.replicas import ReplicaSet
from services.trainer.rollout import Episode, RolloutObserver

if TYPE_CHECKING:  # progress.py imports this module
    from services.trainer.progress import StepStats

STAGES = ("demos", "sft", "grpo", "eval")


class TrainerMetrics(RolloutObserver):
    """All ``trainer_*`` series; also the rollout engine's observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.global_step = Gauge("trainer_global_step", "Optimizer steps done.", registry=r)
        self.reward_mean = Gauge(
            "trainer_reward_mean", "Mean episode reward of the last step.", ["task"], registry=r
        )
        self.success_rate = Gauge(
            "trainer_success_rate", "Success rate of the last step.", ["task"], registry=r
        )
        self.episodes = Counter(
            "trainer_episodes_total",
            "Episodes played (outcome: success|failure|truncated|dropped).",
            ["task", "outcome"],
            registry=r,
        )
        self.episode_turns = Histogram(
            "trainer_episode_turns",
            "Turns per episode.",
            buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50),
            registry=r,
        )
        self.actions = Counter("trainer_actions_total", "Actions the policy sent.", registry=r)
        self.invalid_actions = Counter(
            "trainer_invalid_actions_total", "Replies with no valid action.", registry=r
        )
        self.episodes_per_second = Gauge(
            "trainer_rollout_episodes_per_second", "Episodes/s of the last rollout.", registry=r
        )
        self.tokens_per_second = Gauge(
            "trainer_rollout_tokens_per_second",
            "Generated tokens/s of the last rollout.",
            registry=r,
        )
        self.generated_tokens = Counter(
            "trainer_generated_tokens_total", "Tokens the policy generated.", registry=r
        )
        self.infra_retries = Counter(
            "trainer_infra_retries_total",
            "Infrastructure failures retried or dropped (never scored as reward 0).",
            ["reason"],
            registry=r,
        )
        self.loss = Gauge("trainer_loss", "GRPO loss of the last step.", registry=r)
        self.kl = Gauge(
            "trainer_kl", "KL to the reference: the phase-start policy (beta > 0).", registry=r
        )
        self.stage = Gauge(
            "trainer_stage",
            "1 for the stage running now (demos, sft, grpo, eval), 0 for the others.",
            ["stage"],
            registry=r,
        )
        self.sft_loss = Gauge("trainer_sft_loss", "SFT loss of the last logged step.", registry=r)
        self.sft_step = Gauge("trainer_sft_step", "SFT optimizer steps done.", registry=r)
        self.replay_nll = Gauge(
            "trainer_replay_nll",
            "Mean NLL of the last step's replayed action tokens (replay.enabled).",
            registry=r,
        )
        self.replay_pool = Gauge(
            "trainer_replay_pool",
            "Replayable successes in this phase's probability band (replay.enabled).",
            registry=r,
        )
        self.orm_judgements = Counter(
            "trainer_orm_judgements_total",
            "Episodes the outcome reward model judged, by verdict (yes|no).",
            ["verdict"],
            registry=r,
        )
        self.orm_batch_seconds = Histogram(
            "trainer_orm_batch_seconds",
            "Seconds the outcome reward model took to judge one step's episodes.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.orm_judgements_per_second = Gauge(
            "trainer_orm_judgements_per_second",
            "Episodes judged per second in the last step's judgement.",
            registry=r,
        )
        self.generated_tasks = Counter(
            "trainer_generated_tasks_total",
            "Generated task candidates by generator (programmatic|lm) and fate "
            "(kept|too_easy|too_hard|broken) at phase boundaries (task_generation).",
            ["generator", "fate"],
            registry=r,
        )
        self.task_pool = Gauge(
            "trainer_task_pool_size", "Generated tasks in the curriculum's pool.", registry=r
        )
        self.phase_eval_success = Gauge(
            "trainer_phase_eval_success",
            "Success of the live policy on held-out seeds at the last phase start or the end "
            "(eval.phase_seeds), over the trained or the held-out tasks.",
            ["tasks"],
            registry=r,
        )
        self.phase_eval_step = Gauge(
            "trainer_phase_eval_step",
            "Optimizer step of the last held-out measurement.",
            registry=r,
        )
        self.grad_norm = Gauge("trainer_grad_norm", "Gradient norm of the last step.", registry=r)
        self.step_seconds = Histogram(
            "trainer_step_seconds",
            "Seconds per step phase: rollout (its own length), rollout_wait (the trainer "
            "blocked on it), generation_idle (no rollout in flight before it), update.",
            ["phase"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
            registry=r,
        )
        self.policy_version = Gauge(
            "trainer_policy_version", "Policy version being trained.", registry=r
        )
        self.policy_staleness = Histogram(
            "trainer_policy_staleness",
            "Trainer policy version minus the version that generated a sample.",
            buckets=(0, 1, 2, 3, 4, 8, 16),
            registry=r,
        )
        self.curriculum_weight = Gauge(
            "trainer_curriculum_weight",
            "Share of the next GRPO groups each task gets (curriculum.strategy).",
            ["task"],
            registry=r,
        )
        self.training = Gauge(
            "trainer_training",
            "1 while optimizer steps are being taken (0 while loading, evaluating or done): "
            "alerts on a stalled step count only look at this phase.",
            registry=r,
        )
        self.last_step_time = Gauge(
            "trainer_last_step_timestamp_seconds",
            "Unix time of the last optimizer step (or of the start of training).",
            registry=r,
        )
        self._current_version = 0

    # --- RolloutObserver --------------------------------------------------------------------

    def infra_retry(self, reason: str) -> None:
        self.infra_retries.labels(reason).inc()

    def action(self, valid: bool) -> None:
        self.actions.inc()
        if not valid:
            self.invalid_actions.inc()

    def episode_done(self, episode: Episode) -> None:
        self.episodes.labels(episode.task, episode.outcome).inc()
        if episode.dropped:
            return
        self.episode_turns.observe(episode.turns)
        self.generated_tokens.inc(episode.generated_tokens)

    # --- per step ---------------------------------------------------------------------------

    def watch_replicas(self, replicas: ReplicaSet) -> None:
        """Export the inference replicas' state (``ReplicaCollector``) from now on."""
        self.registry.register(ReplicaCollector(replicas))

    def set_policy_version(self, version: int) -> None:
        self._current_version = version
        self.policy_version.set(version)

    def rollout_done(self, episodes: list[Episode], stats: StepStats) -> None:
        played = [e for e in episodes if not e.dropped]
        seconds = stats.seconds
        self.step_seconds.labels("rollout").observe(seconds)
        self.step_seconds.labels("rollout_wait").observe(stats.wait_seconds)
        self.step_seconds.labels("generation_idle").observe(stats.idle_seconds)
        # Against the version these episodes train (played ahead, they finished a step earlier).
        for version in (v for e in played for v in e.policy_versions):
            self.policy_staleness.observe(max(0, self._current_version - version))
        if seconds > 0:
            self.episodes_per_second.set(len(played) / seconds)
            self.tokens_per_second.set(sum(e.generated_tokens for e in played) / seconds)
        by_task: dict[str, list[Episode]] = {}
        for e in played:
            by_task.setdefault(e.task, []).append(e)
        for task, eps in by_task.items():
            self.reward_mean.labels(task).set(sum(e.reward for e in eps) / len(eps))
            self.success_rate.labels(task).set(sum(e.success for e in eps) / len(eps))

    def orm_judged(self, scores: list[float], seconds: float) -> None:
        """One batch of the outcome reward model's judgements (P(YES) each)."""
        yes = sum(score >= 0.5 for score in scores)
        self.orm_judgements.labels("yes").inc(yes)
        self.orm_judgements.labels("no").inc(len(scores) - yes)
        self.orm_batch_seconds.observe(seconds)
        self.orm_judgements_per_second.set(len(scores) / max(seconds, 1e-9))

    def tasks_generated(self, counts: Mapping[tuple[str, str], int], pool: int) -> None:
        """One phase boundary's candidates, by (generator, fate), and the pool's size after."""
        for (generator, fate), count in counts.items():
            self.generated_tasks.labels(generator, fate).inc(count)
        self.task_pool.set(pool)

    def phase_evaluation_started(self) -> None:
        self.training.set(0)  # no optimizer step while the policy plays held-out pages

    def phase_evaluated(self, step: int, trained: float | None, held_out: float | None) -> None:
        """The live policy's held-out success at ``step`` (``evaluation/phase_eval.py``)."""
        for tasks, value in (("trained", trained), ("held_out", held_out)):
            if value is not None:
                self.phase_eval_success.labels(tasks).set(value)
        self.phase_eval_step.set(step)
        self.training_started(step)  # steps resume: the stall alerts count from now

    def curriculum_weights(self, weights: dict[str, float]) -> None:
        for task, weight in weights.items():
            self.curriculum_weight.labels(task).set(weight)

    def stage_started(self, stage: str) -> None:
        for name in STAGES:
            self.stage.labels(name).set(1 if name == stage else 0)

    def training_started(self, step: int) -> None:
        self.global_step.set(step)
        self.training.set(1)
        self.last_step_time.set_to_current_time()

    def training_ended(self) -> None:
        self.training.set(0)

    def update_done(self, step: int, seconds: float, logs: dict[str, float]) -> None:
        self.global_step.set(step)
        self.last_step_time.set_to_current_time()
        self.step_seconds.labels("update").observe(seconds)
        for key, gauge in (("loss", self.loss), ("kl", self.kl), ("grad_norm", self.grad_norm)):
            if key in logs:
                gauge.set(logs[key])


class ReplicaCollector(Collector):
    """The inference replicas as the trainer sees them, read from the ``ReplicaSet`` at scrape
    time: per replica whether it is up, its version lag behind the pushed version, the requests
    in flight; and the requests moved to another replica after theirs failed."""

    def __init__(self, replicas: ReplicaSet) -> None:
        self.replicas = replicas

    def collect(self):
        labels = ["replica"]
        up = GaugeMetricFamily(
            "trainer_inference_replica_up", "1 while the replica answers.", labels=labels
        )
        lag = GaugeMetricFamily(
            "trainer_inference_replica_version_lag",
            "Pushed policy version minus the version the replica serves (0: current).",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "trainer_inference_replica_in_flight", "Generation requests in flight.", labels=labels
        )
        target = self.replicas.target
        for replica in self.replicas.all():
            up.add_metric([replica.url], 1.0 if replica.up else 0.0)
            if target is not None and replica.version is not None:
                lag.add_metric([replica.url], float(target - replica.version))
            in_flight.add_metric([replica.url], float(replica.in_flight))
        retries = CounterMetricFamily(
            "trainer_inference_retries",
            "Generation requests retried on another replica after theirs failed.",
            value=self.replicas.retries,
        )
        return [up, lag, in_flight, retries]


def serve(metrics: TrainerMetrics, port: int, host: str = "0.0.0.0") -> int:
    """Serve ``/metrics``; returns the bound port (``port=0`` picks a free one)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server.server_address[1]
