"""Several trainer processes: who is who, and the few collectives the run needs between them.

``torchrun --nproc-per-node G [--nnodes N ...] -m services.trainer train ...`` starts G × N copies
of the single-process entry with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set; so does
``accelerate launch --config_file accelerate_configs/<engine>.yaml``, whose file chooses the engine
(``launched_engine``) while the trainer config keeps everything else. The plan:

- **Rank 0 alone** starts the local env pods, serves ``/metrics``, plays the demonstrations,
  plays every GRPO rollout through one env pool and one curriculum, evaluates and writes the
  report. One process talks to the env pods, so ``env.sessions_per_endpoint`` still holds and a
  GRPO group never has two halves on different tasks.
- **Every rank trains.** TRL and accelerate wrap the model (``run.distributed``: DDP, or FSDP2
  sharding parameters, gradients and optimizer state) and average the gradients; config keys are
  global sizes and each rank's share is derived here (``per_process``), so a config means the
  same batch on 1 or 16 GPUs.
- **Sharded weights** (``run.distributed`` fsdp2: PyTorch FSDP2; zero3: DeepSpeed ZeRO-3) are
  gathered whole where rank 0 needs them: every rank joins the gather (``gather_weights``), rank 0
  saves or pushes an unsharded copy. Whatever runs the model on rank 0 alone (the ``local``
  generation backend, the replay pool's scoring) would wait forever for the other ranks' shards:
  ``check`` refuses it up front.
- **A GRPO step:** TRL calls ``rollout_func`` on every rank with that rank's slice of the step's
  prompts; ``rollout_func.ShardedRollout`` gathers the slices on rank 0, plays them, and sends
  each rank the episodes of its own slice (what TRL's vLLM server mode does with generation).
- **Replay:** rank 0 holds the buffer and draws; every rank gets the draw and trains on its
  micro-batches' share (``replay.ReplayTerm``).

The process group is started here, before TRL builds its accelerator (which then reuses it), so
its timeout is ``run.distributed_timeout_s``: the other ranks wait inside collectives while rank
0 plays a rollout or the demonstrations, longer than torch's 30-minute default may allow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.trainer.config import TrainerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the trainer processes (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> World:
        """From the variables torchrun sets (none set: a single process)."""
        return cls(
            rank=int(environ.get("RANK", 0)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
            size=int(environ.get("WORLD_SIZE", 1)),
        )

    @property
    def main(self) -> bool:
        """Rank 0: the process that talks to env pods, serves metrics and writes the run's files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()
"""One process: the default wherever a world is not given."""


def per_process(total: int, world: World, what: str) -> int:
    """A global count (micro-batches per step) split evenly over the processes."""
    if total % world.size:
        raise ValueError(
            f"{what} = {total} cannot be split evenly over {world.size} processes: make it a "
            f"multiple of {world.size}"
        )
    return total // world.size


def check(cfg: TrainerConfig, world: World) -> None:
    """What a config cannot do on this many processes, said before anything starts."""
    if not world.distributed:
        return
    grpo_accumulation(cfg, world)
    if cfg.sft.enabled:
        sft_accumulation(cfg, world)
    if sharding(cfg, world):
        check_sharded(cfg)


ACCELERATE_CONFIGS = "services/trainer/accelerate_configs"
# DeepSpeed settings the trainer derives from its own config (run.offload, the global sizes,
# model.dtype); accelerate refuses them beside the DeepSpeed config the trainer passes
DEEPSPEED_FIELDS_OWNED = frozenset(
    {
        "zero_stage",
        "offload_optimizer_device",
        "offload_param_device",
        "offload_param_nvme_path",
        "offload_optimizer_nvme_path",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "zero3_save_16bit_model",
        "mixed_precision",
    }
)


def _on(value: str | None) -> bool:
    """An accelerate flag variable, read as accelerate reads it."""
    from accelerate.utils import str_to_bool

    return bool(str_to_bool(value or "false"))


def launched_engine(environ: Mapping[str, str] = os.environ) -> str | None:
    """The engine an ``accelerate launch --config_file`` chose, read from the variables it sets
    in every process (None: torchrun or a plain process, where ``run.distributed`` decides).

    The accelerate file picks the engine and the process layout; the trainer config keeps
    everything it already says (sizes, precision, offload, checkpointing), so a file that also
    sets those is refused here rather than half-applied."""
    fix = f"start from {ACCELERATE_CONFIGS}/"
    if _on(environ.get("ACCELERATE_USE_DEEPSPEED")):
        owned = (
            set(environ.get("ACCELERATE_CONFIG_DS_FIELDS", "").split(",")) & DEEPSPEED_FIELDS_OWNED
        )
        if owned:
            raise ValueError(
                f"the accelerate config file sets {', '.join(sorted(owned))}: the trainer writes "
                "DeepSpeed's config from its own (run.offload, the global sizes, model.dtype); "
                f"leave them out ({fix}zero3.yaml)"
            )
        return "zero3"
    if _on(environ.get("ACCELERATE_USE_FSDP")):
        if environ.get("FSDP_VERSION", "1") != "2":
            raise ValueError(
                f"the accelerate config file asks for FSDP 1: set fsdp_version: 2 ({fix}fsdp2.yaml)"
            )
        if _on(environ.get("FSDP_OFFLOAD_PARAMS")):
            raise ValueError(
                "the accelerate config file sets fsdp_offload_params: set run.offload all in the "
                f"trainer config instead ({fix}fsdp2.yaml)"
            )
        if _on(environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")):
            raise ValueError(
                "the accelerate config file leaves fsdp_cpu_ram_efficient_loading on (accelerate's "
                "default): set it false, every rank loads the whole model before FSDP2 shards it "
                f"({fix}fsdp2.yaml)"
            )
        return "fsdp2"
    if "ACCELERATE_MIXED_PRECISION" in environ:  # set by every accelerate launch
        return "ddp"
    return None


def adopt_launched_engine(cfg: TrainerConfig, environ: Mapping[str, str] = os.environ) -> str:
    """``run.distributed`` under the launcher: the accelerate file's engine where one chose it
    for several processes, refused where the config names another."""
    engine = launched_engine(environ) if World.from_env(environ).distributed else None
    if engine is None or engine == cfg.run.distributed:
        return cfg.run.distributed
    if "distributed" in cfg.run.model_fields_set:
        raise ValueError(
            f"accelerate launch runs {engine} (its config file) but the trainer config says "
            f"run.distributed {cfg.run.distributed}: drop run.distributed, or launch with "
            f"{ACCELERATE_CONFIGS}/{cfg.run.distributed}.yaml"
        )
    log.info("run.distributed %s, from the accelerate config file", engine)
    return engine


def engine_in_use(cfg: TrainerConfig, world: World) -> str:
    """``run.distributed`` under torchrun; one process always trains a plain model ("ddp")."""
    return cfg.run.distributed if world.distributed else "ddp"


def sharding(cfg: TrainerConfig, world: World) -> bool:
    """Whether the model is sharded over this run's processes (fsdp2, zero3)."""
    return engine_in_use(cfg, world) != "ddp"


def check_sharded(cfg: TrainerConfig) -> None:
    """What rank 0 would have to do alone with a model whose shards live on every rank."""
    engine = cfg.run.distributed
    alone = f"rank 0 alone cannot run a model {engine} shards over every rank"
    if cfg.grpo.max_steps and cfg.generation.backend.type == "local":
        raise ValueError(
            f"run.distributed {engine} with generation.backend.type local: {alone}; generate "
            "with the remote (vLLM) backend, or use run.distributed ddp"
        )
    if cfg.replay.enabled:
        raise ValueError(
            f"run.distributed {engine} with replay.enabled: {alone} (the replay pool's "
            "scoring), and the ranks replay different numbers of samples; use run.distributed ddp"
        )
    if cfg.policy_sync.enabled and cfg.policy_sync.transport == "nccl":
        raise ValueError(
            f"run.distributed {engine} with policy_sync.transport nccl: the NCCL transfer reads "
            "whole parameters; use transport shared_dir"
        )


FRESH = "or start a fresh run (checkpoint.resume_from_checkpoint false)"
HOLDS = {
    "ddp": "whole weights (a ddp or one-process run)",
    "fsdp2": "FSDP2 shards",
    "zero3": "DeepSpeed ZeRO-3 partitions",
}
RESUME = {
    "ddp": "with run.distributed ddp",
    "fsdp2": "under torchrun with run.distributed fsdp2",
    "zero3": "under torchrun with run.distributed zero3",
}


def checkpoint_engine(checkpoint: Path) -> tuple[str, int | None]:
    """(engine, processes) that wrote ``checkpoint``: FSDP2 writes ``pytorch_model_fsdp_*``
    (resharded on load, any number of processes), DeepSpeed a ``global_step*`` folder with one
    optimizer partition per process; anything else holds whole weights."""
    if any(checkpoint.glob("pytorch_model_fsdp_*")):
        return "fsdp2", None
    for folder in checkpoint.glob("global_step*"):
        return "zero3", len(list(folder.glob("*_optim_states.pt"))) or None
    return "ddp", None


def check_resumable(checkpoint: str | Path | None, cfg: TrainerConfig, world: World) -> None:
    """A checkpoint resumes under the engine that wrote it; ZeRO-3's partitions also on the
    number of processes that wrote them (DeepSpeed does not repartition them on load)."""
    if checkpoint is None:
        return
    engine, processes = checkpoint_engine(Path(checkpoint))
    if engine != engine_in_use(cfg, world):
        raise ValueError(f"{checkpoint} holds {HOLDS[engine]}: resume it {RESUME[engine]}, {FRESH}")
    if processes is not None and processes != world.size:
        raise ValueError(
            f"{checkpoint} holds {HOLDS[engine]} of {processes} processes and DeepSpeed does "
            f"not repartition them: resume it on {processes} processes (this run has "
            f"{world.size}), {FRESH}"
        )


def engine_args(cfg: TrainerConfig, world: World) -> dict[str, Any]:
    """The ``TrainingArguments`` (GRPO and SFT) that say how the processes share the model."""
    args: dict[str, Any] = {"ddp_timeout": int(cfg.run.distributed_timeout_s)}
    engine = engine_in_use(cfg, world)
    if engine == "zero3":
        return args | {
            "deepspeed": zero3_config(cfg),
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
        }
    if engine == "fsdp2":
        return args | {
            "fsdp": True,
            "fsdp_config": {
                "version": 2,
                "reshard_after_forward": True,
                # checkpoints: each rank writes its shards (torch.distributed.checkpoint, which
                # reshards on load); final/ and the pushes are gathered whole (gather_weights)
                "state_dict_type": "SHARDED_STATE_DICT",
                # FSDP's own checkpointing (the Trainer's would gather every layer twice)
                "activation_checkpointing": cfg.model.gradient_checkpointing,
                # parameters, gradients and the optimizer step in host memory (CPUOffloadPolicy)
                "cpu_offload": cfg.run.offload == "all",
            },
            "gradient_checkpointing": False,
        }
    return args | {"gradient_checkpointing": cfg.model.gradient_checkpointing}


def zero3_config(cfg: TrainerConfig) -> dict[str, Any]:
    """DeepSpeed's config for ZeRO-3; "auto" values are filled from the TrainingArguments
    (derived per-process sizes, dtype, the optimizer's settings)."""
    zero: dict[str, Any] = {
        "stage": 3,
        # checkpoints carry the whole adapter/model too, as a ddp run's do
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    config: dict[str, Any] = {
        "zero_optimization": zero,
        # train_batch_size is left to DeepSpeed (HF would fill it before the world size)
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }
    if cfg.run.offload != "none":
        host = {"device": "cpu", "pin_memory": not cfg.use_cpu}
        zero["offload_optimizer"] = host
        if cfg.run.offload == "all":
            zero["offload_param"] = host
        # DeepSpeed's own AdamW, which it runs as its CPU Adam on offloaded state (the
        # Trainer's torch AdamW would step there too, refused by DeepSpeed as too slow); the
        # Trainer's scheduler still drives it
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def grpo_accumulation(cfg: TrainerConfig, world: World) -> int:
    """Each process's micro-batches of a GRPO step."""
    return per_process(
        cfg.grpo.micro_batches_per_step,
        world,
        "grpo micro-batches per step (prompts_per_step * num_generations / micro_batch_size)",
    )


def sft_accumulation(cfg: TrainerConfig, world: World) -> int:
    """Each process's micro-batches of an SFT step."""
    steps = cfg.sft.gradient_accumulation_steps
    return per_process(steps, world, "sft.gradient_accumulation_steps")


def start(world: World, *, use_cpu: bool, timeout_s: float) -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs); nothing with one process."""
    import torch
    import torch.distributed as dist

    if not world.distributed or dist.is_initialized():
        return
    if not use_cpu and torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    backend = "gloo" if use_cpu or not torch.cuda.is_available() else "nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    log.info("process group: rank %d of %d (%s)", world.rank, world.size, backend)


def gather(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks)."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world.size if world.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def scatter(items: list[Any] | None, world: World) -> Any:
    """Rank r receives ``items[r]`` from rank 0 (``items`` is read on rank 0 only)."""
    if not world.distributed:
        assert items is not None
        return items[0]
    import torch.distributed as dist

    out: list[Any] = [None]
    dist.scatter_object_list(out, items if world.main else None, src=0)
    return out[0]


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when it is true on any (a SIGTERM seen by one rank stops them all)."""
    if not world.distributed:
        return flag
    import torch.distributed as dist

    flags: list[Any] = [None] * world.size
    dist.all_gather_object(flags, flag)
    return any(flags)


def barrier(world: World) -> None:
    """Wait here until every rank arrives (e.g. until rank 0 has written the data)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def stop(world: World) -> None:
    """Leave the process group once every rank got here: a rank that exits while the others'
    gloo threads still talk to it aborts them ("terminate called without an active exception")."""
    import torch.distributed as dist

    if world.distributed and dist.is_initialized():
        barrier(world)
        dist.destroy_process_group()


def sharded(model) -> bool:
    """Whether FSDP2 (DTensor parameters) or ZeRO-3 (partitioned parameters, ``ds_id``) shards
    ``model``'s parameters over the ranks."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


def copy_weights(target, source) -> None:
    """``target`` parameter := ``source`` on every rank. FSDP2 shards alike copy shard to shard;
    ZeRO-3 parameters are gathered whole and repartitioned (small ones stay whole on every rank
    between steps, so their partitions alone are not what the forward pass reads)."""
    if hasattr(source, "ds_id") or hasattr(target, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([target, source], modifier_rank=0):
            target.data.copy_(source.data)
    else:
        target.data.copy_(source.data)


def gather_weights(model, world: World, *, adapter: str | None = None) -> dict[str, Any]:
    """A sharded model's weights, whole, on rank 0's CPU (``{}`` on the others); only the LoRA
    adapter's when ``adapter`` names it. Every rank must call it: each tensor is all-gathered in
    turn, so no rank ever holds more than one whole tensor beyond its shards."""
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters(remove_duplicate=False))
    out: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        if adapter is not None and f".{adapter}." not in name:
            continue
        param = params.get(name)
        if hasattr(param, "ds_id"):  # ZeRO-3: the state dict holds the empty placeholder
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                whole = param.data.detach().to("cpu", copy=True) if world.main else None
        else:
            whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            whole = whole.detach().to("cpu", copy=True) if world.main else None
        if world.main:
            out[name] = whole
    return out


@contextmanager
def whole_models():
    """Models built inside are plain, whole ones. While a ZeRO-3 config is alive, transformers
    builds every model partitioned over the ranks (a collective): one that rank 0 builds alone
    (an unsharded copy, an evaluated policy, an ORM) would wait forever for the others."""
    from transformers.integrations import deepspeed as hf_deepspeed

    alive = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers' own switch
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = alive


def save_sharded(model, folder: Path, world: World) -> None:
    """Save a sharded model as ``save_pretrained`` would the unsharded one: the LoRA adapter
    ``default`` alone for a PEFT model, else the whole model (every rank must call it)."""
    peft = hasattr(model, "peft_config")
    weights = gather_weights(model, world, adapter="default" if peft else None)
    if not world.main:
        return
    if peft:
        with whole_models():
            model.save_pretrained(str(folder), selected_adapters=["default"], state_dict=weights)
    else:
        unsharded_copy(model, weights).save_pretrained(str(folder), safe_serialization=True)


def unsharded_copy(model, weights: dict[str, Any]):
    """A plain CPU model (with its LoRA adapter, if any) holding ``weights`` from
    ``gather_weights``: what rank 0 merges, saves or pushes."""
    import torch
    from transformers import AutoModelForCausalLM

    peft_config = getattr(model, "peft_config", None)
    base = model.get_base_model() if peft_config else model
    with torch.device("cpu"), whole_models():
        copy = AutoModelForCausalLM.from_config(base.config, dtype=base.dtype)
        if peft_config:
            from peft import get_peft_model

            copy = get_peft_model(copy, peft_config["default"])
    missing, _ = copy.load_state_dict(weights, strict=False)  # other adapters ("ref") stay out
    tied = {name for name in missing if name.endswith("lm_head.weight")}
    if set(missing) - tied:
        raise RuntimeError(f"gathered weights lack {sorted(set(missing) - tied)[:5]}")
    copy.tie_weights()
    return copy
