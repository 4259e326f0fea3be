"""The SFT warm-up: TRL's ``SFTTrainer`` on trajectories, loss on the policy's own action tokens.

Each trajectory becomes ``input_ids = prompt_ids + completion_ids`` with ``labels`` equal to the
token where ``env_mask`` is 1 and -100 everywhere else: the prompt and the env's replies are
masked exactly as GRPO masks them, so the two stages train on the same token sequences. Records
made with the student's own tokenizer and prompt format keep their exact ids; others (a
teacher's) are re-rendered from their pages and actions by the student's prompt builder
(``PromptBuilder.render_episode``). Nothing is truncated: the rollout stack already kept every
episode inside ``prompt.max_prompt_tokens``, and a cut sequence would lose its last action.

The result is a model folder (``<run.output_dir>/sft/model``; a LoRA adapter is merged into its
base) that GRPO starts from.

    python -m services.trainer sft --config cfg.yaml
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from transformers import TrainerCallback

from services.protocol.trajectory import Trajectory
from services.trainer import distributed
from services.trainer.config import TrainerConfig
from services.trainer.distributed import SINGLE, World
from services.trainer.metrics import TrainerMetrics
from services.trainer.progress import METRICS_FILE, MetricsLog
from services.trainer.prompts import PromptBuilder
from services.trainer.trackers import report_to
from services.trainer.trajectories import read_trajectories

log = logging.getLogger(__name__)
IGNORE = -100


def tokens_of(record: Trajectory, prompts: PromptBuilder) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one trajectory for this student (see the module docstring)."""
    own = (
        record.tokenizer == prompts.tokenizer.name_or_path
        and record.prompt_format == prompts.format
    )
    if own:
        prompt_ids, completion, mask = record.prompt_ids, record.completion_ids, record.env_mask
    else:
        turns = [(t.observation, t.action, t.error) for t in record.turns]
        prompt_ids, completion, mask = prompts.render_episode(record.goal, turns, record.max_turns)
    trained = [t if m else IGNORE for t, m in zip(completion, mask, strict=True)]
    labels = [IGNORE] * len(prompt_ids) + trained
    return list(prompt_ids) + list(completion), labels


def sft_dataset(cfg: TrainerConfig, records: Iterable[Trajectory], prompts: PromptBuilder):
    """A ``datasets.Dataset`` of ``input_ids`` + ``labels`` (successes only, if configured)."""
    from datasets import Dataset

    columns: dict[str, list] = {"input_ids": [], "labels": []}
    for record in records:
        if cfg.sft.successes_only and not record.success:
            continue
        input_ids, labels = tokens_of(record, prompts)
        columns["input_ids"].append(input_ids)
        columns["labels"].append(labels)
    if not columns["input_ids"]:
        raise ValueError("no trajectory to learn from (none, or no success among them)")
    return Dataset.from_dict(columns)


def sft_args(cfg: TrainerConfig, world: World = SINGLE):
    """TRL's ``SFTConfig``: a step of ``micro_batch_size × gradient_accumulation_steps``
    sequences on 1 process or N (the accumulation is split over the processes)."""
    from trl import SFTConfig

    s = cfg.sft
    accumulation = distributed.sft_accumulation(cfg, world)
    return SFTConfig(
        output_dir=str(cfg.sft_folder),
        seed=cfg.run.seed,
        num_train_epochs=s.epochs,
        learning_rate=s.learning_rate,
        per_device_train_batch_size=s.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type=s.lr_scheduler_type,
        warmup_steps=s.warmup_ratio,  # a float in [0, 1) is a share of the steps
        max_length=None,  # never cut: the action is at the end
        logging_steps=1,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=2,
        report_to=report_to(cfg.run),
        run_name=f"{cfg.run.output_dir.name}/sft",  # trackio, W&B: one run per stage
        project="browser-rl",  # trackio's project
        use_cpu=cfg.use_cpu,
        bf16=cfg.model.dtype == "bfloat16",
        fp16=cfg.model.dtype == "float16",
        dataloader_num_workers=0,
        **distributed.engine_args(cfg, world),
    )


class SftProgress(TrainerCallback):
    """One line per logged step: loss, accuracy on the trained tokens, learning rate (and the
    loss and step on ``/metrics``). ``stage`` and ``tokens`` name them in the line (the ORM's
    training trains answer tokens)."""

    def __init__(
        self, metrics: TrainerMetrics | None = None, stage: str = "sft", tokens: str = "action"
    ) -> None:
        self.metrics = metrics
        self.stage = stage
        self.tokens = tokens

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            if self.metrics is not None:
                self.metrics.sft_loss.set(logs["loss"])
                self.metrics.sft_step.set(state.global_step)
            print(
                f"{self.stage} step {state.global_step}/{state.max_steps} | "
                f"loss {logs['loss']:.4f} | "
                f"{self.tokens}-token accuracy {logs.get('mean_token_accuracy', 0.0):.3f} | "
                f"lr {logs.get('learning_rate', 0.0):.2e}",
                flush=True,
            )


def run_sft(
    cfg: TrainerConfig,
    datasets: list[Path],
    *,
    model=None,
    tokenizer=None,
    metrics: TrainerMetrics | None = None,
    world: World = SINGLE,
) -> Path:
    """Train on ``datasets`` (trajectory folders or files); the merged model's folder (written
    by rank 0, read by every rank after it)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import SFTTrainer

    from services.trainer.grpo import lora_config
    from services.trainer.loading import load_for_training
    from services.trainer.restarts import last_complete_checkpoint
    from services.trainer.trl_compat import score_only_completion_tokens_on_cpu

    if cfg.use_cpu:  # Gemma's 262k-token head on 2 cores: 85 s per step without, ~17 s with
        score_only_completion_tokens_on_cpu()
    if model is None:
        model, tokenizer, _ = load_for_training(cfg)
    prompts = PromptBuilder.from_config(tokenizer, cfg.after_sft())
    dataset = sft_dataset(cfg, read_trajectories(datasets), prompts)
    trained_tokens = sum(sum(label != IGNORE for label in row) for row in dataset["labels"])
    log.info("SFT on %d trajectories (%d trained tokens, %s prompts) from %s", len(dataset),
             trained_tokens, prompts.format, ", ".join(map(str, datasets)))  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg, world),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        callbacks=(
            [SftProgress(metrics), MetricsLog(cfg.run.output_dir / METRICS_FILE, "sft")]
            if world.main
            else []
        ),
    )
    out = cfg.sft_folder
    resume = last_complete_checkpoint(out) if cfg.checkpoint.resume_from_checkpoint else None
    distributed.check_resumable(resume, cfg, world)
    trainer.train(resume_from_checkpoint=resume)
    model = trainer.model
    if distributed.sharded(model):  # FSDP2, ZeRO-3: every rank joins the gather, rank 0 saves
        weights = distributed.gather_weights(model, world)
        model = distributed.unsharded_copy(model, weights) if world.main else None
    if world.main:
        save_merged(model, tokenizer, out / "model")
    distributed.barrier(world)
    return out / "model"


def save_merged(model, tokenizer, folder: Path) -> Path:
    """The trained policy as a plain model folder (a LoRA adapter merged into its base)."""
    model = getattr(model, "module", model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder
