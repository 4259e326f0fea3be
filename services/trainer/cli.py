"""``python -m services.trainer``: a run's stages from YAML configs, each also on its own.

    python -m services.trainer train --config services/trainer/configs/local_cpu.yaml
    python -m services.trainer train --config base.yaml --config overlay.yaml --set grpo.max_steps=3
    python -m services.trainer demos --config cfg.yaml     # demonstrations only
    python -m services.trainer sft --config cfg.yaml       # the SFT warm-up only
    python -m services.trainer check --config cfg.yaml     # validate only, start nothing
    python -m services.trainer eval --config cfg.yaml --trained auto
    python -m services.trainer report runs/local_cpu   # the run's HTML report and plots
    python -m services.trainer orm train --config cfg.yaml  # an outcome reward model (orm section)
    python -m services.trainer orm eval --config cfg.yaml   # ... against the checkers

``train`` validates the whole config before it loads a model or starts a process, serves
``/metrics``, starts local env pods when ``env.local.pods > 0`` (the cluster shape as
processes), follows env discovery and runs the configured stages in order (``pipeline.py``):
demonstrations and the SFT warm-up (``sft.enabled``), GRPO (``grpo.max_steps > 0``), then
(``eval.after_training``) base vs final policy on held-out seeds, the table printed.

Under ``torchrun --nproc-per-node G -m services.trainer train ...`` every process trains and
rank 0 alone plays the episodes, serves ``/metrics`` and evaluates (``distributed.py``).

SIGTERM (Kubernetes draining a node, deleting the pod) during GRPO finishes the running step,
saves a checkpoint and exits 143, so the replacement pod resumes from it; a second SIGTERM, or one
outside training, exits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import signal
import sys
from pathlib import Path

from services.trainer import distributed
from services.trainer.config import TrainerConfig, load_config, parse_override
from services.trainer.distributed import World
from services.trainer.envs import env_pods
from services.trainer.evaluation import cli as eval_cli
from services.trainer.trackers import report_to

log = logging.getLogger("services.trainer")


def _config(args: argparse.Namespace) -> TrainerConfig:
    overrides = dict(parse_override(item) for item in args.set or [])
    cfg = load_config(*args.config, overrides=overrides)
    engine = distributed.adopt_launched_engine(cfg)
    if engine == cfg.run.distributed:
        return cfg
    return load_config(*args.config, overrides=overrides | {"run.distributed": engine})


def _install_diagnostics() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack to stderr (a stuck run, diagnosed)."""
    with contextlib.suppress(ValueError, OSError):  # stderr without a file descriptor
        faulthandler.register(signal.SIGUSR1)


def demos(cfg: TrainerConfig) -> int:
    from services.trainer.demos import generate_demos

    with env_pods(cfg) as pods:
        generate_demos(cfg, pods)
    return 0


def sft(cfg: TrainerConfig, world: World) -> int:
    from services.trainer.pipeline import sft_data
    from services.trainer.sft import run_sft

    if world.main:
        with env_pods(cfg) as pods:
            sft_data(cfg, pods)
    distributed.barrier(world)
    folder = run_sft(cfg, cfg.sft_sources, world=world)
    if world.main:
        print(f"SFT model: {folder}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.trainer", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "the configured stages: demonstrations, SFT, GRPO, then base vs trained"),
        ("demos", "play demonstration episodes and save the successes (demos section)"),
        ("sft", "the SFT warm-up alone, on sft.datasets or the demonstrations"),
        ("check", "validate a config and exit"),
        ("orm", "the outcome reward model: train it, or measure it against the checkers"),
    ):
        sub = commands.add_parser(name, help=help_text)
        if name == "orm":
            sub.add_argument("action", choices=("train", "eval"))
        sub.add_argument(
            "--config",
            action="append",
            required=True,
            help="trainer YAML (configs/*.yaml); repeat to merge overlays, later wins",
        )
        sub.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set grpo.max_steps=3 (repeatable)",
        )
        if name == "train":
            sub.add_argument("--no-eval", action="store_true", help="skip the evaluation after")
    eval_cli.add_arguments(commands.add_parser("eval", help="evaluate base and/or trained"))
    report = commands.add_parser("report", help="a run folder's HTML report and training plots")
    report.add_argument("run_dir", help="the run's output_dir, e.g. runs/local_cpu")
    args = parser.parse_args(argv)
    world = World.from_env()
    rank = f"[rank {world.rank}] " if world.distributed else ""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {rank}%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "eval":
        if world.distributed:  # every rank would play every episode again
            print("eval runs as one process: python -m services.trainer eval", file=sys.stderr)
            return 2
        return eval_cli.run_from_args(args)
    if args.command == "report":
        return write_report(args.run_dir)
    try:
        cfg = _config(args)
        report_to(cfg.run)  # a missing tracker fails now; trackio's folder is set before TRL loads
        distributed.check(cfg, world)
    except ValueError as exc:  # a ConfigError, or what this many processes cannot do
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{' + '.join(args.config)}: OK")
        return 0
    _install_diagnostics()
    distributed.start(world, use_cpu=cfg.use_cpu, timeout_s=cfg.run.distributed_timeout_s)
    if args.command == "demos":
        return demos(cfg) if world.main else 0  # rank 0 plays them
    if args.command == "sft":
        code = sft(cfg, world)
        distributed.stop(world)
        return code
    if args.command == "orm":
        from services.trainer.orm.cli import run as orm

        return orm(cfg, args.action) if world.main else 0
    from services.trainer.evaluation.report import EvalError
    from services.trainer.pipeline import run

    try:
        return run(cfg, evaluate_after=not args.no_eval, world=world)
    except EvalError as exc:
        print(f"evaluation error: {exc}", file=sys.stderr)
        return 2


def write_report(run_dir: str) -> int:
    from services.trainer.run_report import write_report as write

    try:
        path = write(Path(run_dir))
    except FileNotFoundError as exc:
        print(f"report error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}", flush=True)
    return 0
