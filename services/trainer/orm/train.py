"""Training an outcome reward model: TRL's ``SFTTrainer`` on the answer token only, LoRA.

Each labelled trajectory becomes the judge's prompt followed by one token, YES or NO; the loss
sees that token alone (every other label is -100), so the model learns to put its probability
on the right one of the two answers, which is exactly what ``OrmScorer`` compares. The result is
``<run.output_dir>/orm/model``: a LoRA adapter over the base (servable as a second adapter on
the policy's vLLM server) or, with ``lora.enabled: false``, a full model.

    python -m services.trainer orm train --config cfg.yaml
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from services.trainer.config import TrainerConfig
from services.trainer.orm.data import Example, balanced, describe, examples
from services.trainer.orm.prompt import JudgePrompt
from services.trainer.trajectories import read_trajectories

log = logging.getLogger(__name__)
IGNORE = -100


def orm_folder(cfg: TrainerConfig) -> Path:
    return cfg.run.output_dir / "orm"


def orm_base(cfg: TrainerConfig) -> TrainerConfig:
    """The config whose ``model`` is the ORM's base."""
    return cfg.with_model(source=cfg.orm.base) if cfg.orm.base else cfg


def load_splits(cfg: TrainerConfig) -> dict[str, list[Example]]:
    if not cfg.orm.data:
        raise ValueError("orm.data lists no labelled trajectories (folders or .jsonl files)")
    records = read_trajectories(cfg.orm.data)
    splits = examples(records, cfg.orm.held_out_tasks, cfg.orm.test_seed_share)
    for name, items in splits.items():
        log.info("ORM %s: %s", name, describe(items))
    return splits


def orm_dataset(items: Sequence[Example], prompt: JudgePrompt):
    """``input_ids`` + ``labels`` with only the answer token trained."""
    from datasets import Dataset

    columns: dict[str, list] = {"input_ids": [], "labels": []}
    for example in items:
        ids, mask = prompt.example_ids(example.judge_input, example.label)
        columns["input_ids"].append(ids)
        columns["labels"].append([t if m else IGNORE for t, m in zip(ids, mask, strict=True)])
    return Dataset.from_dict(columns)


def train_orm(cfg: TrainerConfig) -> Path:
    """Train on the training split; the model folder (adapter or full model + tokenizer)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import SFTConfig, SFTTrainer

    from services.trainer.grpo import lora_config
    from services.trainer.loading import load_for_training
    from services.trainer.sft import SftProgress
    from services.trainer.trl_compat import score_only_completion_tokens_on_cpu

    if cfg.use_cpu:  # the LM head then scores the answer position alone
        score_only_completion_tokens_on_cpu()
    splits = load_splits(cfg)
    train = balanced(splits["train"]) if cfg.orm.balance else splits["train"]
    if not any(e.label for e in train) or all(e.label for e in train):
        raise ValueError(f"the ORM needs both verdicts in its training split: {describe(train)}")
    base = orm_base(cfg)
    model, tokenizer, _ = load_for_training(base)
    prompt = JudgePrompt(tokenizer, page_tokens=cfg.orm.page_tokens)
    out = orm_folder(cfg)
    o = cfg.orm
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        seed=cfg.run.seed,
        num_train_epochs=o.epochs,
        learning_rate=o.learning_rate,
        per_device_train_batch_size=o.micro_batch_size,
        gradient_accumulation_steps=o.gradient_accumulation_steps,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        max_length=None,  # the page is already cut to orm.page_tokens; the answer is last
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=cfg.use_cpu,
        bf16=cfg.model.dtype == "bfloat16",
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=orm_dataset(train, prompt),
        processing_class=tokenizer,
        peft_config=lora_config(base),
        callbacks=[SftProgress(stage="orm", tokens="answer")],
    )
    log.info("ORM training on %s (balanced: %s)", describe(train), o.balance)
    trainer.train()
    folder = out / "model"
    trainer.model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
