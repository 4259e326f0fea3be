"""Several trainer processes (torchrun or accelerate launch, gloo on CPU): the same config means
the same step on 1 or N processes, rank 0 alone plays the episodes, and what cannot work is
refused up front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from services.trainer import distributed
from services.trainer.cli import main
from services.trainer.config import ConfigError, load_config
from services.trainer.distributed import SINGLE, World
from services.trainer.rollout_func import RolloutStalledError, ShardedRollout
from tests.inference.fakes import free_port, serve_policy_service

ROOT = Path(__file__).resolve().parents[2]
FSDP_ON_CPU = "tests.trainer.fsdp_on_cpu"
MINIMAL = {
    "model": {"source": "pypi:gemma3-270m"},
    "tasks": {"train": ["click-test"]},
    "env": {"local": {"pods": 1}},
    "grpo": {"max_steps": 1, "prompts_per_step": 2, "num_generations": 4, "micro_batch_size": 2},
}


REMOTE = {"generation": {"backend": {"type": "remote", "servers": {"endpoints": ["http://x"]}}}}
FULL_BY_NCCL = {
    "enabled": True,
    "servers": {"endpoints": ["http://x"]},
    "mode": "full",
    "transport": "nccl",
}


def test_the_world_comes_from_torchrun_variables():
    assert World.from_env({}) == World(0, 0, 1) and not World.from_env({}).distributed
    world = World.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (world.rank, world.local_rank, world.size, world.main) == (3, 1, 4, False)


def test_global_sizes_split_evenly_or_say_how_to_fix_them():
    assert distributed.per_process(4, World(size=2), "x") == 2
    with pytest.raises(ValueError, match=r"x = 4 cannot be split evenly over 3 .* multiple of 3"):
        distributed.per_process(4, World(size=3), "x")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grpo": {"micro_batch_size": 4}}, r"grpo micro-batches per step .* = 2 .* over 4"),
        (
            {"sft": {"enabled": True, "gradient_accumulation_steps": 2}},
            r"sft\.gradient_accumulation_steps = 2 cannot be split evenly over 4",
        ),
        ({"run": {"distributed": "fsdp2"}}, r"fsdp2 with generation\.backend\.type local: rank 0"),
        (
            {"run": {"distributed": "fsdp2"}, **REMOTE, "replay": {"enabled": True}},
            r"fsdp2 with replay\.enabled: .* use run\.distributed ddp",
        ),
        (
            {"run": {"distributed": "fsdp2"}, **REMOTE, "policy_sync": FULL_BY_NCCL},
            r"fsdp2 with policy_sync\.transport nccl",
        ),
        ({"run": {"distributed": "zero3"}}, r"zero3 with generation\.backend\.type local: rank 0"),
        (
            {"run": {"distributed": "zero3"}, **REMOTE, "replay": {"enabled": True}},
            r"zero3 with replay\.enabled: .* use run\.distributed ddp",
        ),
    ],
)
def test_what_n_processes_cannot_do_is_refused_before_anything_starts(
    tmp_path, monkeypatch, capsys, changes, message
):
    config = {**MINIMAL, **{k: {**MINIMAL.get(k, {}), **v} for k, v in changes.items()}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message):
        distributed.check(load_config(path), World(size=4))
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main(["train", "--config", str(path)]) == 2
    assert "config error" in capsys.readouterr().err


def _engine(engine: str, offload: str = "none") -> dict:
    """``engine_args`` of MINIMAL on 2 processes under that engine and offload."""
    cfg = load_config({**MINIMAL, **REMOTE, "run": {"distributed": engine, "offload": offload}})
    return distributed.engine_args(cfg, World(size=2))


def test_offload_puts_the_optimizer_or_everything_in_host_memory():
    plain = _engine("zero3")["deepspeed"]
    assert "optimizer" not in plain  # the Trainer's own AdamW, on the GPUs
    assert not {"offload_optimizer", "offload_param"} & plain["zero_optimization"].keys()
    optimizer = _engine("zero3", "optimizer")["deepspeed"]
    assert optimizer["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in optimizer["zero_optimization"]
    assert optimizer["optimizer"]["type"] == "AdamW"  # DeepSpeed's, run as its CPU Adam
    assert set(optimizer["optimizer"]["params"].values()) == {"auto"}  # the Trainer's settings
    everything = _engine("zero3", "all")["deepspeed"]["zero_optimization"]
    assert everything["offload_param"]["device"] == everything["offload_optimizer"]["device"]
    assert _engine("fsdp2", "all")["fsdp_config"]["cpu_offload"] is True
    assert _engine("fsdp2")["fsdp_config"]["cpu_offload"] is False
    with pytest.raises(ConfigError, match=r"offload all needs run\.distributed fsdp2 or zero3"):
        _engine("ddp", "all")
    with pytest.raises(ConfigError, match=r"use run\.offload all, or zero3"):
        _engine("fsdp2", "optimizer")


ACCELERATE_CONFIGS = ROOT / distributed.ACCELERATE_CONFIGS


def _accelerate_env(config: Path) -> dict[str, str]:
    """The variables ``accelerate launch --config_file config`` gives each process, from
    accelerate's own launcher (what launch_command does, short of starting the processes)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    argv = ["--config_file", str(config), "--num_processes", "2", "-m", "services.trainer"]
    args, defaults, precision_from_file = _validate_launch_command(parser.parse_args(argv))
    if not args.use_deepspeed:
        return prepare_multi_gpu_env(args)
    fields = [*defaults.deepspeed_config, *(["mixed_precision"] if precision_from_file else [])]
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return prepare_deepspeed_cmd_env(args)[1]


@pytest.mark.parametrize("engine", ["ddp", "fsdp2", "zero3"])
def test_each_shipped_accelerate_config_launches_its_engine(engine):
    launched = _accelerate_env(ACCELERATE_CONFIGS / f"{engine}.yaml")
    assert distributed.launched_engine(launched) == engine
    env = {**launched, "WORLD_SIZE": "2"}  # what torch's launcher adds for each process
    # A config that leaves run.distributed out runs the launcher's engine; one that names
    # another engine is refused with the file to use.
    cfg = load_config({**MINIMAL, **REMOTE})
    assert distributed.adopt_launched_engine(cfg, env) == engine
    other = "zero3" if engine == "ddp" else "ddp"
    cfg = load_config({**MINIMAL, **REMOTE, "run": {"distributed": other}})
    with pytest.raises(ValueError, match=rf"launch runs {engine} .*/{other}\.yaml"):
        distributed.adopt_launched_engine(cfg, env)
    # One process trains a plain model whatever the file says; torchrun: the config decides.
    assert distributed.adopt_launched_engine(cfg, launched) == other
    assert distributed.launched_engine({}) is None


@pytest.mark.parametrize(
    ("engine", "extra", "message"),
    [
        ("zero3", {"zero_stage": 3, "offload_optimizer_device": "cpu"},
         "sets offload_optimizer_device, zero_stage: the trainer writes DeepSpeed's config"),
        ("fsdp2", {"fsdp_version": 1}, "asks for FSDP 1: set fsdp_version: 2"),
        ("fsdp2", {"fsdp_offload_params": True}, "fsdp_offload_params: set run.offload all"),
        ("fsdp2", {"fsdp_cpu_ram_efficient_loading": True}, "set it false, every rank loads"),
    ],
)  # fmt: skip
def test_an_accelerate_config_that_overrules_the_trainer_config_is_refused(
    engine, extra, message, tmp_path
):
    config = yaml.safe_load((ACCELERATE_CONFIGS / f"{engine}.yaml").read_text())
    section = "deepspeed_config" if engine == "zero3" else "fsdp_config"
    config[section] |= extra
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message):
        distributed.launched_engine(_accelerate_env(path))


def test_a_checkpoint_resumes_only_under_the_engine_that_wrote_it(tmp_path):
    (tmp_path / "sharded" / "pytorch_model_fsdp_0").mkdir(parents=True)
    (tmp_path / "whole").mkdir()
    for rank in range(2):  # DeepSpeed: one optimizer partition per process
        partitions = tmp_path / "partitioned" / "global_step2"
        partitions.mkdir(parents=True, exist_ok=True)
        (partitions / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").touch()
    ddp = load_config({**MINIMAL, "run": {"output_dir": str(tmp_path)}})
    fsdp2, zero3 = (
        ddp.model_copy(update={"run": ddp.run.model_copy(update={"distributed": engine})})
        for engine in ("fsdp2", "zero3")
    )
    two = World(size=2)
    distributed.check_resumable(tmp_path / "sharded", fsdp2, two)
    distributed.check_resumable(tmp_path / "sharded", fsdp2, World(size=4))  # resharded on load
    distributed.check_resumable(tmp_path / "partitioned", zero3, two)
    distributed.check_resumable(tmp_path / "whole", ddp, two)
    distributed.check_resumable(tmp_path / "whole", fsdp2, SINGLE)  # one process: never sharded
    with pytest.raises(ValueError, match="holds FSDP2 shards: resume it under torchrun"):
        distributed.check_resumable(tmp_path / "sharded", ddp, two)
    with pytest.raises(ValueError, match=r"holds whole weights .* with run\.distributed ddp"):
        distributed.check_resumable(tmp_path / "whole", fsdp2, two)
    with pytest.raises(ValueError, match=r"ZeRO-3 partitions: resume it .* run\.distributed zero3"):
        distributed.check_resumable(tmp_path / "partitioned", fsdp2, two)
    with pytest.raises(ValueError, match=r"partitions of 2 processes .* resume it on 2 processes"):
        distributed.check_resumable(tmp_path / "partitioned", zero3, World(size=4))


def test_evaluation_under_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", "--config", "services/trainer/configs/local_cpu.yaml"]) == 2
    assert "eval runs as one process" in capsys.readouterr().err


class _Player:
    """Stands in for rank 0's BrowserRollout: one value per prompt, or a failed rollout."""

    def __call__(self, prompts, trainer):
        if "fail" in prompts:
            raise RolloutStalledError("no env pod")
        return {"prompt": list(prompts), "played_by": [os.getpid()] * len(prompts)}

    def close(self) -> None:
        pass


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    world = World.from_env()
    distributed.start(world, use_cpu=True, timeout_s=60)
    rollout = ShardedRollout(_Player() if world.main else None, world)
    prompts = [f"r{rank}-{i}" for i in range(3 if rank == 0 else 1)]  # blocks of any size
    out[rank] = rollout(prompts, trainer=None)
    try:
        rollout(["fail"], trainer=None)
    except RolloutStalledError as exc:
        out[f"failed {rank}"] = str(exc)
    distributed.stop(world)


def test_rank_0_plays_every_rank_s_prompts_and_each_gets_its_own_back():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(free_port(), out), nprocs=2)
        results = dict(out)
    assert results[0]["prompt"] == ["r0-0", "r0-1", "r0-2"]
    assert results[1]["prompt"] == ["r1-0"]
    assert len({*results[0]["played_by"], *results[1]["played_by"]}) == 1  # one player
    # A failed rollout fails every rank, instead of leaving the others waiting for it.
    assert results["failed 0"] == "no env pod"
    assert "rank 0's rollout failed: RolloutStalledError: no env pod" in results["failed 1"]


# --- torchrun end to end --------------------------------------------------------------------


def _run(
    tmp_path: Path,
    model: Path,
    processes: int,
    *overrides: str,
    name: str = "",
    entry: str = "services.trainer",
    accelerate: str = "",
) -> Path:
    """``train`` (demonstrations → SFT step → 2 GRPO steps) under torchrun with ``processes``;
    ``overrides``: ``--set`` items; ``name``: the run folder (default ``run-<processes>``);
    ``entry``: the module torchrun starts; ``accelerate``: launch with ``accelerate launch`` and
    that engine's shipped config file instead."""
    out = tmp_path / (name or f"run-{processes}")
    config = {
        "run": {"output_dir": str(out), "seed": 0},
        "model": {"source": str(model)},
        "tasks": {"train": ["click-button"], "max_turns": 2},
        "env": {"local": {"pods": 1, "max_sessions": 4}, "sessions_per_endpoint": 4},
        "prompt": {"action_subsets": ["miniwob_liu18"]},
        # rewards that differ inside each group, the same on every run: no sampling to compare
        "generation": {"backend": {"type": "scripted", "spread": True}, "max_new_tokens": 12},
        "demos": {"episodes_per_task": 5},  # 4 solved: 2 SFT steps of 2, none uneven
        "sft": {
            "enabled": True,
            "epochs": 1,
            "micro_batch_size": 1,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.0,
            "lr_scheduler_type": "constant",
            "prompt_format": "plain",
        },
        "grpo": {
            "max_steps": 2,
            "prompts_per_step": 2,
            "num_generations": 4,
            "micro_batch_size": 2,
            "learning_rate": 1e-3,
            "beta": 0.0,
        },
        "lora": {"enabled": True, "r": 4, "alpha": 8},
        # every kept success replayed (a band of all probabilities), weighted so it counts
        "replay": {"enabled": True, "min_prob": 1e-6, "max_prob": 1.0, "coef": 1.0},
        "metrics": {"port": free_port()},  # a second server on it would fail the run
        "eval": {"after_training": False},
    }
    path = tmp_path / f"cfg-{out.name}-{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", "-m", entry, "train"]
    if accelerate:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        command += [str(ACCELERATE_CONFIGS / f"{accelerate}.yaml"), f"--num_processes={processes}"]
        command += [f"--main_process_port={free_port()}", "-m", entry, "train"]
    command += ["--config", str(path), *(f"--set={item}" for item in overrides)]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    if processes > 1:
        assert "[rank 1]" in done.stderr  # logs say which rank
        assert done.stderr.count("starting 1 local env pods") == 1  # rank 0 alone
    return out


def _assert_same_training(one: Path, two: Path) -> None:
    """The first-step losses, SFT and GRPO, and the weights after both stages agree."""
    for stage in ("sft", "grpo"):
        first, second = _metrics(one, stage)[0], _metrics(two, stage)[0]
        assert first["loss"] == pytest.approx(second["loss"], rel=1e-3, abs=1e-5), stage
    for name in ("sft/model/model.safetensors", "final/adapter_model.safetensors"):
        a, b = load_file(one / name), load_file(two / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5, msg=key)


def _merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """``adapter`` merged into ``base``: the policy a full push should carry."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


def _episodes(out: Path) -> list[tuple]:
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    return sorted(
        (r["step"], r["task"], r["seed"], tuple(r["actions"]), r["reward"]) for r in records
    )


def _metrics(out: Path, stage: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == stage and "loss" in r]


@pytest.mark.chromium
@pytest.mark.slow
def test_two_processes_train_the_same_steps_as_one(tmp_path, tiny_chat_model):
    one = _run(tmp_path, tiny_chat_model, 1)
    two = _run(tmp_path, tiny_chat_model, 2)

    # SFT data that splits evenly (an uneven last batch is padded with repeats under DDP).
    assert len((one / "demos" / "scripted" / "part-00000.jsonl").read_text().splitlines()) == 4

    # The same global batch and groups: rank 0 played all 8 episodes of each step, once.
    episodes = _episodes(one)
    assert episodes == _episodes(two) and len(episodes) == 2 * 8
    assert {reward for *_, reward in episodes} == {0.0, 1.0}  # something to learn from

    # Rank 0 drew the replayed successes; every rank trained on its micro-batches' share.
    replayed = [r["replay_samples"] for r in _metrics(one, "grpo")]
    assert replayed == [r["replay_samples"] for r in _metrics(two, "grpo")] and min(replayed) > 0

    # The same first-step losses, SFT and GRPO, and the same weights after both stages.
    _assert_same_training(one, two)

    # The 2-process run's checkpoint resumes on 1 process (DDP checkpoints hold whole weights).
    assert (two / "checkpoint-2").is_dir()
    _run(tmp_path, tiny_chat_model, 1, "grpo.max_steps=3", "checkpoint.resume_from_checkpoint=true",
         name="run-2")  # fmt: skip
    assert [r["step"] for r in _metrics(two, "grpo")] == [1, 2, 3]
    assert _episodes(two)[: 2 * 8] == episodes and len(_episodes(two)) == 3 * 8


SHARDED = {  # engine: (the module torchrun starts, what its checkpoint holds)
    "fsdp2": (FSDP_ON_CPU, "pytorch_model_fsdp_0"),  # each rank's shards
    "zero3": ("services.trainer", "global_step2"),  # DeepSpeed's partitions, one per rank
}


@pytest.fixture(scope="module")
def one_process_without_replay(tmp_path_factory, tiny_chat_model) -> Path:
    """The one-process run both sharded engines are compared with (replay is refused for them)."""
    return _run(tmp_path_factory.mktemp("one"), tiny_chat_model, 1, "replay.enabled=false")


@pytest.mark.chromium
@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(SHARDED))
def test_sharded_engines_train_the_same_steps_push_whole_weights_and_resume(
    tmp_path, tiny_chat_model, one_process_without_replay, engine
):
    """FSDP2 or ZeRO-3 over 2 gloo processes (tests/trainer/fsdp_on_cpu.py lets accelerate
    shard with FSDP2 on CPU; DeepSpeed runs on CPU as it is), started by ``accelerate launch``
    with the engine's shipped config file: the same losses and weights as one process, whole
    weights gathered for every push, the SFT model and final/; then under torchrun (the chart's
    launcher, run.distributed set) the sharded checkpoint resumes."""
    entry, holds = SHARDED[engine]
    shared = tmp_path / "shared"
    service = serve_policy_service(free_port(), tiny_chat_model, tmp_path)
    sharded = (
        "replay.enabled=false",  # refused when sharded (checked above)
        "policy_sync.enabled=true",
        f"policy_sync.servers={{endpoints: [{service.url}]}}",
        f"policy_sync.shared_dir={shared}",
        "policy_sync.mode=full",  # after SFT the service's base changed: the merged policy
    )
    try:
        one = one_process_without_replay
        # run.distributed left out: the accelerate config file chooses the engine
        two = _run(
            tmp_path, tiny_chat_model, 2, *sharded, name=engine, entry=entry, accelerate=engine
        )
        assert (two / "checkpoint-2" / holds).is_dir()

        assert _episodes(one) == _episodes(two)
        _assert_same_training(one, two)

        # Every rank joined each push's gather: the service reloaded whole merged weights (v0:
        # GRPO's start, the SFT model), the last one final/'s adapter merged into that start.
        reloads = [Path(c[1]).name for c in service.engine.calls if c[0] == "reload_weights"]
        assert reloads == ["v00000000", "v00000001", "v00000002"]
        pushed = load_file(shared / "full" / "v00000002" / "model.safetensors")
        merged = _merged(two / "sft" / "model", two / "final")
        assert pushed.keys() <= merged.keys() and "lm_head.weight" not in pushed
        for key in pushed:
            torch.testing.assert_close(pushed[key], merged[key], msg=key)

        # The sharded checkpoint resumes under torchrun (each engine loads its own shards).
        _run(tmp_path, tiny_chat_model, 2, *sharded, f"run.distributed={engine}",
             "grpo.max_steps=3", "checkpoint.resume_from_checkpoint=true", name=engine,
             entry=entry)  # fmt: skip
        assert [r["step"] for r in _metrics(two, "grpo")] == [1, 2, 3]
    finally:
        service.stop()
