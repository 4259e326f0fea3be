"""``python -m services.trainer eval`` (also ``python -m services.trainer.evaluation``).

With ``--config`` the run's own config says everything (tasks, prompts, env pods, backend, the
held-out seed split); the flags override its ``eval`` section. Without one, a config is built from
the flags and goes through the same validation, so there is one seed-split rule, not two.

    python -m services.trainer eval --config cfg.yaml --trained auto
    python -m services.trainer.evaluation --base pypi:gemma3-270m --tasks click-test,focus-text \\
        --seeds 20 --local-pods 2 --out runs/eval
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, get_args

from services.trainer.config import (
    ConfigError,
    PromptFormatChoice,
    TrainerConfig,
    load_config,
    parse_override,
)
from services.trainer.envs import env_pods
from services.trainer.evaluation.report import EvalError, EvalSettings, base_report
from services.trainer.evaluation.run import compare
from services.trainer.loading import PolicyLoadError, PolicySpec, find_checkpoint, trained_spec

#: Local pods for a slow CPU policy: a session may wait minutes for its next action.
LOCAL_POD_IDLE_TTL_S = 3600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", help="trainer YAML (repeatable: merged)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    parser.add_argument("--base", help="base model source (default: the config's model.source)")
    parser.add_argument(
        "--trained",
        help="checkpoint folder (LoRA adapter or full model); 'auto': the config's final/newest",
    )
    parser.add_argument("--no-base", action="store_true", help="measure only --trained")
    parser.add_argument(
        "--base-results",
        help="reuse the base report of an earlier eval.json (default: the config's "
        "eval.base_results; --set eval.base_results=null measures the base)",
    )
    parser.add_argument("--tasks", help="comma-separated tasks (default: the config's)")
    parser.add_argument("--seeds", type=int, help="held-out seeds per task")
    parser.add_argument("--seed-start", type=int, help="first held-out seed")
    parser.add_argument("--max-turns", type=int, help="steps per episode (protocol: 10)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per action at most")
    parser.add_argument("--prompt-format", choices=get_args(PromptFormatChoice))
    parser.add_argument("--env", action="append", default=[], help="env pod URL (repeatable)")
    parser.add_argument("--local-pods", type=int, help="start N local env pods (default 2)")
    parser.add_argument("--max-sessions", type=int, default=4, help="sessions per local pod")
    parser.add_argument("--cache-dir", help="model cache (default: the config's or ~/.cache)")
    parser.add_argument("--out", help="output folder (default: <run.output_dir>/eval or runs/eval)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config keys the flags set (flags left out set nothing)."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    flags = {
        "eval.tasks": tasks,
        "eval.seeds_per_task": args.seeds,
        "eval.seed_start": args.seed_start,
        "eval.max_turns": args.max_turns,
        "eval.temperature": args.temperature,
        "generation.max_new_tokens": args.max_new_tokens,
        "model.prompt_format": args.prompt_format,
        "model.cache_dir": args.cache_dir,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_override(item) for item in args.set or [])
    return overrides


def config_from_args(args: argparse.Namespace) -> TrainerConfig:
    """The run's config with the flags applied, or (no ``--config``) one built from the flags."""
    overrides = _overrides(args)
    if args.env or args.local_pods is not None or not args.config:
        pods = args.local_pods if args.local_pods is not None else (0 if args.env else 2)
        overrides.update(
            {
                "env.discovery": {"type": "static", "endpoints": list(args.env)},
                "env.local.pods": pods,
                "env.local.max_sessions": args.max_sessions,
            }
        )
        if pods and not args.config:
            overrides["env.local.pod.idle_ttl_s"] = LOCAL_POD_IDLE_TTL_S
    if args.config:
        return load_config(*args.config, overrides=overrides)
    if not args.tasks:
        raise EvalError("give --tasks (or --config)")
    minimal = {
        "model": {"source": args.base or str(args.trained or "none")},
        "tasks": {"train": overrides["eval.tasks"]},
        "grpo": {"max_steps": 1},
        "metrics": {"port": None},
        "run": {"output_dir": "runs/eval"},
        "env": {"local": {"pods": 0}},
    }
    return load_config(minimal, overrides=overrides)


def base_model(args: argparse.Namespace, cfg: TrainerConfig) -> str | None:
    """The base model's source: ``--base``, else the config's (none without a config)."""
    return args.base or (cfg.model.source if args.config else None)


def policies_from_args(
    args: argparse.Namespace, cfg: TrainerConfig, *, base_reused: bool = False
) -> list[PolicySpec]:
    """The policies to measure: the base (unless its report is reused) and the trained one."""
    base = base_model(args, cfg)
    specs = []
    if not args.no_base and not base_reused:
        if base is None:
            raise EvalError("no base model: give --base (or --config), or --no-base")
        specs.append(PolicySpec("base", base))
    trained_on, trained_format = base, None
    if args.config and cfg.sft.enabled:  # GRPO started from the SFT model, in SFT's prompts
        start = cfg.after_sft(cfg.sft_folder / "model")
        trained_on, trained_format = start.model.source, start.model.prompt_format
    trained_format = args.prompt_format or trained_format
    if args.trained == "auto":
        if not args.config:
            raise EvalError("--trained auto needs --config (it looks in run.output_dir)")
        checkpoint = find_checkpoint(cfg.run.output_dir)
        specs.append(trained_spec(checkpoint, trained_on, prompt_format=trained_format))
    elif args.trained:
        specs.append(trained_spec(args.trained, trained_on, prompt_format=trained_format))
    if not specs:
        raise EvalError("nothing to evaluate: give --base and/or --trained")
    return specs


def run_from_args(args: argparse.Namespace) -> int:
    """Run the ``eval`` command; returns the exit status."""
    try:
        cfg = config_from_args(args)
        reused = None if args.no_base else args.base_results or cfg.eval.base_results
        model = base_model(args, cfg)
        before = base_report(reused, EvalSettings.of(cfg), model=model) if reused else None
        policies = policies_from_args(args, cfg, base_reused=bool(reused))
    except (EvalError, ConfigError, PolicyLoadError) as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or cfg.run.output_dir / "eval")
    with env_pods(cfg) as pods:
        _, md_path = compare(cfg, policies, pods, out, before=before)
    print(md_path.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.trainer.evaluation",
        description="Success rate of a base model and/or a checkpoint on held-out seeds.",
    )
    add_arguments(parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_from_args(parser.parse_args(argv))
