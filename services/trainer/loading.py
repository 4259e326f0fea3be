"""Policies from disk: the model a run trains, and the policies an evaluation measures.

``load_for_training`` loads ``model.source`` for GRPO/SFT. A full fine-tune keeps float32 master
weights whatever ``model.dtype`` says: the dtype is the compute dtype (TRL/accelerate autocast),
because a bf16 parameter rounds away an Adam step of lr 1e-6 (the bf16 spacing near a weight of
0.02 is 1.2e-4). A LoRA base is frozen, so it loads in the compute dtype (PEFT keeps the adapter
itself in float32).

``load_for_generation`` loads a ``PolicySpec`` (a model source, optionally with a LoRA adapter,
which is merged in for fast generation); ``find_checkpoint`` and ``trained_spec`` name the policy
a finished (or interrupted) run left behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.trainer.config import TrainerConfig
from services.trainer.distributed import whole_models
from services.trainer.models import resolve_model


class PolicyLoadError(ValueError):
    """A policy folder is not what it claims to be; the message says what to give instead."""


def load_for_training(cfg: TrainerConfig) -> tuple[Any, Any, Path]:
    """(model, tokenizer, folder) of ``model.source`` with the parameter dtype training needs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(cfg.model.source, cfg.model.cache_dir.expanduser())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=parameter_dtype(cfg, torch))
    return model, tokenizer, folder


def parameter_dtype(cfg: TrainerConfig, torch) -> Any:
    """float32 master weights for a full fine-tune; the compute dtype for a frozen LoRA base."""
    return torch.float32 if not cfg.lora.enabled else getattr(torch, cfg.model.dtype)


@dataclass(frozen=True)
class PolicySpec:
    """A policy to evaluate: a model source, optionally with a LoRA adapter on top.

    ``model`` may itself be a checkpoint folder: a full model (``config.json``) or a LoRA adapter
    (``adapter_config.json``, whose base model is then loaded from ``base_model_name_or_path``).
    """

    label: str
    model: str
    adapter: str | None = None
    prompt_format: str | None = None
    """The prompt format it was trained with (None: the config's ``model.prompt_format``)."""


def load_for_generation(spec: PolicySpec, cache_dir: str | Path | None = None, dtype="float32"):
    """(model, tokenizer) for ``spec``, the adapter merged in for fast generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_source, adapter = spec.model, spec.adapter
    if adapter is None and (Path(spec.model) / "adapter_config.json").is_file():
        adapter = spec.model
        base_source = _adapter_base(Path(adapter))
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise PolicyLoadError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    base_dir = resolve_model(base_source, cache_dir)
    with whole_models():  # one process's own copy, also beside a ZeRO-3 run's partitions
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
    tokenizer_dir = next(
        (
            Path(d)
            for d in (adapter, spec.model)
            if d and (Path(d) / "tokenizer_config.json").is_file()
        ),
        base_dir,
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if adapter is not None:
        from peft import PeftModel

        with whole_models():
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model, tokenizer


def _adapter_base(adapter: Path) -> str:
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise PolicyLoadError(
            f"{adapter}/adapter_config.json names no base model; pass --base-model"
        )
    return base


def find_checkpoint(output_dir: str | Path) -> Path:
    """``<output_dir>/final`` if training finished, else the newest ``checkpoint-N``."""
    out = Path(output_dir)
    if (out / "final").is_dir():
        return out / "final"
    steps = [
        (int(p.name.removeprefix("checkpoint-")), p)
        for p in out.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit()
    ]
    if not steps:
        raise PolicyLoadError(
            f"no trained policy in {out} (no final/ nor checkpoint-N/): train first"
        )
    return max(steps)[1]


def trained_spec(
    checkpoint: str | Path, base: str | None, prompt_format: str | None = None
) -> PolicySpec:
    """The ``trained`` policy of a checkpoint folder: a LoRA adapter goes on ``base``."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise PolicyLoadError(f"trained checkpoint {path}: no such folder")
    if (path / "adapter_config.json").is_file() and base is not None:
        return PolicySpec("trained", base, str(path), prompt_format)
    return PolicySpec("trained", str(path), prompt_format=prompt_format)
