"""The GRPO job: TRL's ``GRPOTrainer`` built from the config around the rollout stack, then run.

``build_training`` loads the policy (unless given), builds the generation backend, the rollout
stack, the curriculum and the reward sources from the config, and hands TRL a ``rollout_func``
(``rollout_func.py``) and ``reward_funcs`` + ``reward_weights`` (``rewards.py``). Callbacks add the
step line (``progress.py``), the curriculum's checkpointed state and the graceful SIGTERM
(``restarts.py``) and, when configured, the policy push to the inference service
(``policy_sync.py``). ``run_training`` resumes if configured, trains, and saves ``final/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import ProgressCallback

from services.trainer import distributed
from services.trainer.config import TrainerConfig
from services.trainer.curriculum import build_curriculum
from services.trainer.dataset import build_dataset
from services.trainer.discovery import Discovery, StaticDiscovery
from services.trainer.distributed import SINGLE, World
from services.trainer.episode_log import StepRecords
from services.trainer.evaluation.phase_eval import PhaseEvaluation
from services.trainer.evaluation.report import EvalSettings
from services.trainer.generation import BackendContext, build_backend
from services.trainer.loading import load_for_training
from services.trainer.metrics import TrainerMetrics
from services.trainer.phases import PhaseReference, drop_reference_adapter
from services.trainer.progress import METRICS_FILE, MetricsLog, StepLine
from services.trainer.replay import ReplayBuffer, ReplayTerm
from services.trainer.replicas import ReplicaSet, replica_set
from services.trainer.restarts import (
    CurriculumCheckpoint,
    GracefulStop,
    checkpoint_step,
    resume_target,
)
from services.trainer.rewards import build_rewards
from services.trainer.rollout_func import BrowserRollout, ShardedRollout
from services.trainer.stack import RolloutStack
from services.trainer.trackers import report_to
from services.trainer.trl_compat import log_step_metrics, score_only_completion_tokens_on_cpu

log = logging.getLogger(__name__)


def grpo_args(cfg: TrainerConfig, world: World = SINGLE):
    """TRL's ``GRPOConfig`` from ours: one rollout of ``prompts_per_step × num_generations``
    episodes per optimizer step, split into micro-batches of ``micro_batch_size`` samples, those
    spread evenly over the processes (TRL multiplies its batch by their number: the sizes here
    are per process so that a step is the same on 1 or N)."""
    from trl import GRPOConfig

    g = cfg.grpo
    accumulation = distributed.grpo_accumulation(cfg, world)
    return GRPOConfig(
        output_dir=str(cfg.run.output_dir),
        seed=cfg.run.seed,
        max_steps=g.max_steps,
        per_device_train_batch_size=g.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        num_generations=g.num_generations,
        learning_rate=g.learning_rate,
        lr_scheduler_type=g.lr_scheduler_type,
        warmup_steps=g.warmup_steps,
        weight_decay=g.weight_decay,
        max_grad_norm=g.max_grad_norm,
        loss_type=g.loss_type,
        beta=g.beta,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        num_iterations=g.num_iterations,
        scale_rewards=g.scale_rewards,
        max_completion_length=g.max_completion_length,
        reward_weights=[reward.weight for reward in cfg.rewards],
        # TRL scores tokens under softmax(logits / temperature): the sampling temperature.
        temperature=cfg.generation.temperature,
        use_vllm=False,
        use_cpu=cfg.use_cpu,
        # Mixed precision: the parameters stay float32 (loading.parameter_dtype), the forward
        # and backward passes run in the configured dtype.
        bf16=cfg.model.dtype == "bfloat16",
        fp16=cfg.model.dtype == "float16",
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.checkpoint.save_steps,
        save_total_limit=cfg.checkpoint.save_total_limit,
        push_to_hub=cfg.checkpoint.push_to_hub,
        hub_model_id=cfg.checkpoint.hub_model_id,
        report_to=report_to(cfg.run),
        run_name=f"{cfg.run.output_dir.name}/grpo",  # trackio, W&B: one run per stage
        project="browser-rl",  # trackio's project
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=False,
        **distributed.engine_args(cfg, world),
    )


def lora_config(cfg: TrainerConfig):
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def with_reference_adapter(cfg: TrainerConfig, model):
    """(model, peft_config for TRL). LoRA with ``beta > 0``: the adapter is made here, so TRL keeps
    a frozen copy of it named ``ref`` as the KL reference (``phases.py`` moves it each phase);
    handed a ``peft_config`` instead, TRL would measure the KL to the base model."""
    config = lora_config(cfg)
    if config is None or cfg.grpo.beta == 0 or hasattr(model, "peft_config"):
        return model, config
    from peft import get_peft_model
    from transformers import set_seed

    # the adapter's random start from the seed alone, as TRL's own would be (under ZeRO-3 the
    # base loads partitioned, which draws from the generator first)
    set_seed(cfg.run.seed)
    return get_peft_model(model, config), None


def replay_buffer(cfg: TrainerConfig, prompts) -> ReplayBuffer:
    """The run's buffer (``<run>/replay``), seeded with the SFT stage's data when configured."""
    r = cfg.replay
    buffer = ReplayBuffer(
        cfg.run.output_dir / "replay", prompts, r.capacity, band=(r.min_prob, r.max_prob)
    )
    if r.include_demos and cfg.sft.enabled:
        buffer.seed_with([p for p in cfg.sft_sources if p.exists()])
    return buffer


def replay_term(
    cfg: TrainerConfig, buffer: ReplayBuffer | None, trainer, world: World = SINGLE
) -> ReplayTerm:
    """The replay loss term (``buffer``: rank 0's; None on the other ranks)."""
    g = cfg.grpo
    return ReplayTerm(
        buffer,
        coef=cfg.replay.coef,
        per_step=int(cfg.replay.ratio * g.samples_per_step),
        micro_batches=g.micro_batches_per_step,
        seed=cfg.run.seed,
        report=lambda figures: log_step_metrics(trainer, figures),
        world=world,
    )


@dataclass
class Training:
    """A built trainer and the parts around it (``close`` when done). Under several processes
    only rank 0 has a ``rollout`` (it plays every episode), a progress line and a curriculum."""

    trainer: Any
    rollout: BrowserRollout | None
    rollout_func: BrowserRollout | ShardedRollout
    metrics: TrainerMetrics
    progress: StepLine | None
    tokenizer: Any
    model_folder: Path | None
    curriculum_checkpoint: CurriculumCheckpoint | None
    graceful_stop: GracefulStop
    world: World

    @property
    def stack(self) -> RolloutStack:
        assert self.rollout is not None, "only rank 0 plays episodes"
        return self.rollout.stack

    def close(self) -> None:
        self.rollout_func.close()


def build_training(
    cfg: TrainerConfig,
    discovery: Discovery | Sequence[str],
    *,
    model=None,
    tokenizer=None,
    metrics: TrainerMetrics | None = None,
    world: World = SINGLE,
) -> Training:
    """A ready ``GRPOTrainer`` (model loaded unless given) with the env rollout plugged in.

    ``discovery``: where the env pods are (a ``Discovery``, or a list of URLs for a static one;
    read by rank 0 only).
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from services.trainer.grpo_trainer import BrowserGRPOTrainer

    distributed.check(cfg, world)
    if cfg.use_cpu:
        score_only_completion_tokens_on_cpu()
    folder = None
    if model is None:
        model, tokenizer, folder = load_for_training(cfg)
    elif tokenizer is None:
        raise ValueError("build_training: a model needs its tokenizer")
    metrics = metrics or TrainerMetrics()
    trainer_ref: list = []
    rollout = None
    replicas = shared_replicas(cfg) if world.main else None
    if world.main:
        rollout = _browser_rollout(cfg, discovery, tokenizer, metrics, trainer_ref, replicas)
    rollout_func = ShardedRollout(rollout, world) if world.distributed else rollout
    assert rollout_func is not None
    buffer = rollout.replay if rollout is not None else None
    model, peft_config = with_reference_adapter(cfg, model)
    try:
        trainer = BrowserGRPOTrainer(
            model=model,
            reward_funcs=build_rewards(
                cfg.rewards, metrics=metrics, cache_dir=cfg.model.cache_dir.expanduser()
            ),
            args=grpo_args(cfg, world),
            train_dataset=build_dataset(cfg),
            processing_class=tokenizer,
            peft_config=peft_config,
            rollout_func=rollout_func,
        )
    except Exception:
        rollout_func.close()
        raise
    trainer_ref.append(trainer)
    trainer.correct_off_policy = cfg.rollout.correction == "behaviour"
    if cfg.replay.enabled:
        trainer.replay_term = replay_term(cfg, buffer, trainer, world)
    trainer.remove_callback(ProgressCallback)
    progress = curriculum_checkpoint = None
    if rollout is not None:
        progress = StepLine(
            lambda: rollout.last,
            metrics,
            every=cfg.run.log_every_steps,
            max_minutes=cfg.run.max_train_minutes,
            report=lambda figures: log_step_metrics(trainer, figures),
        )
        trainer.add_callback(progress)
        trainer.add_callback(MetricsLog(cfg.run.output_dir / METRICS_FILE, "grpo"))
        curriculum_checkpoint = CurriculumCheckpoint(rollout.curriculum)
        trainer.add_callback(curriculum_checkpoint)
    # At a step's end, in this order: the step line (its update time leaves the push out), the
    # push, then the phase start, so what a phase start probes or measures through the inference
    # service is this step's policy.
    if cfg.policy_sync.enabled and (world.main or distributed.sharding(cfg, world)):
        # sharded (fsdp2, zero3): every rank joins the gather of each pushed version
        from services.trainer.policy_sync import build_callback

        trainer.add_callback(
            build_callback(
                cfg.policy_sync, push_at_start=cfg.sft.enabled, replicas=replicas, world=world
            )
        )
    on_phase_start = [buffer.rescore] if buffer else []
    if rollout is not None and rollout.task_generation is not None:
        on_phase_start.append(rollout.task_generation.phase_started)
    trainer.add_callback(PhaseReference(trainer, cfg.grpo.phase_steps, on_phase_start))
    if rollout is not None and cfg.eval.phase_seeds:
        trainer.add_callback(phase_evaluation(cfg, rollout.stack, metrics))
    graceful_stop = GracefulStop(world)
    trainer.add_callback(graceful_stop)
    return Training(
        trainer,
        rollout,
        rollout_func,
        metrics,
        progress,
        tokenizer,
        folder,
        curriculum_checkpoint,
        graceful_stop,
        world,
    )


def phase_evaluation(
    cfg: TrainerConfig, stack: RolloutStack, metrics: TrainerMetrics
) -> PhaseEvaluation:
    """The live policy on held-out seeds at each phase start (``eval.phase_seeds``)."""
    return PhaseEvaluation(
        stack,
        EvalSettings.of(cfg),
        cfg.eval.phase_seeds,
        cfg.grpo.phase_steps,
        StepRecords(cfg.run.output_dir / METRICS_FILE),
        metrics,
    )


def shared_replicas(cfg: TrainerConfig) -> ReplicaSet | None:
    """One replica set for generation and the policy pushes when both name the same servers, so
    generation only goes to replicas that serve the pushed version (services/trainer/replicas.py).
    """
    backend = cfg.generation.backend
    if (
        cfg.policy_sync.enabled
        and backend.type == "remote"
        and backend.servers == cfg.policy_sync.servers
    ):
        return replica_set(backend.servers, max_lag=cfg.rollout.max_staleness)
    return None


def _browser_rollout(
    cfg: TrainerConfig,
    discovery: Discovery | Sequence[str],
    tokenizer,
    metrics: TrainerMetrics,
    trainer_ref: list,
    replicas: ReplicaSet | None = None,
) -> BrowserRollout:
    """Rank 0's episode player: generation backend, rollout stack, curriculum, replay buffer.
    ``trainer_ref`` holds the trainer once it exists (the local backend samples its model);
    ``replicas``: the inference replicas shared with the policy pushes, if any."""
    if not isinstance(discovery, Discovery):
        discovery = StaticDiscovery(discovery)
    context = BackendContext(
        tokenizer=tokenizer,
        model=lambda: trainer_ref[0].accelerator.unwrap_model(trainer_ref[0].model),
        policy_version=lambda: trainer_ref[0].state.global_step if trainer_ref else 0,
        replicas=replicas,
        pin_episodes=cfg.rollout.max_staleness > 0,
    )
    if replicas is not None:
        metrics.watch_replicas(replicas)
    backend = build_backend(cfg.generation.backend, context)
    stack = RolloutStack(cfg, tokenizer, backend, discovery, observer=metrics)
    curriculum = build_curriculum(cfg.curriculum, cfg.tasks.names, seed=cfg.run.seed)
    eos = tokenizer.eos_token_id
    buffer = replay_buffer(cfg, stack.prompts) if cfg.replay.enabled else None
    return BrowserRollout(
        cfg, stack, curriculum, metrics, eos if isinstance(eos, int) else eos[0], buffer
    )


def run_training(training: Training, cfg: TrainerConfig) -> Path | None:
    """Train to ``max_steps`` (resuming if configured); save the final policy; its folder.

    None when a SIGTERM stopped training early (its checkpoint is saved; no ``final/``)."""
    target = resume_target(cfg)
    distributed.check_resumable(target, cfg, training.world)
    step = checkpoint_step(target) if target is not None else 0
    if target is not None and training.curriculum_checkpoint is not None:
        training.curriculum_checkpoint.restore(target)
    # A resumed run replays the steps after its checkpoint; a fresh one in an old folder starts
    # a fresh log: either way each step's episodes appear once.
    episode_log = training.rollout.episode_log if training.rollout is not None else None
    if episode_log is not None and (gone := episode_log.rewind(step)):
        log.info("episodes.jsonl: dropped %d records of steps after %d", gone, step)
    training.trainer.train(resume_from_checkpoint=target)
    if training.graceful_stop.requested:
        return None
    final = cfg.run.output_dir / "final"
    model = training.trainer.model
    if distributed.sharded(model):  # FSDP2, ZeRO-3: every rank joins the gather, rank 0 saves
        distributed.save_sharded(model, final, training.world)
    else:
        drop_reference_adapter(model)  # final/ holds the policy alone
        training.trainer.save_model(str(final))
    if training.world.main:
        training.tokenizer.save_pretrained(str(final))
    distributed.barrier(training.world)  # the other ranks may read final/ once it is whole
    return final
