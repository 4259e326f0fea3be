"""``python -m services.trainer``: train (and evaluate) from YAML configs, or evaluate alone.

    python -m services.trainer train --config services/trainer/configs/local_cpu.yaml
    python -m services.trainer train --config base.yaml --config overlay.yaml --set grpo.max_steps=3
    python -m services.trainer check --config cfg.yaml     # validate only, start nothing
    python -m services.trainer eval --config cfg.yaml --trained auto

``train`` validates the whole config before it loads a model or starts a process, serves
``/metrics``, starts local env pods when ``env.local.pods > 0`` (the cluster shape as
processes), follows env discovery, trains with GRPO, saves ``final/``, then
(``eval.after_training``) measures base vs trained on held-out seeds and prints the table.

SIGTERM (Kubernetes draining a node, deleting the pod) during training finishes the running step,
saves a checkpoint and exits 143, so the replacement pod resumes from it; a second SIGTERM, or one
outside training, exits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import logging
import signal
import sys
import time

import yaml

from services.trainer.config import (
    ConfigError,
    TrainerConfig,
    dump_config,
    load_config,
    parse_override,
)
from services.trainer.evaluation import cli as eval_cli

log = logging.getLogger("services.trainer")
EXIT_TERMINATED = 128 + signal.SIGTERM


def _config(args: argparse.Namespace) -> TrainerConfig:
    overrides = dict(parse_override(item) for item in args.set or [])
    return load_config(*args.config, overrides=overrides)


def _install_diagnostics() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack to stderr (a stuck run, diagnosed)."""
    with contextlib.suppress(ValueError, OSError):  # stderr without a file descriptor
        faulthandler.register(signal.SIGUSR1)


def train(cfg: TrainerConfig, *, evaluate_after: bool) -> int:
    from services.trainer.envs import env_pods
    from services.trainer.grpo import build_training, run_training
    from services.trainer.metrics import TrainerMetrics, serve

    _install_diagnostics()
    out = cfg.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
    metrics = TrainerMetrics()
    if cfg.metrics.port is not None:
        port = serve(metrics, cfg.metrics.port, cfg.metrics.host)
        log.info("metrics at http://%s:%d/metrics", cfg.metrics.host, port)
    started = time.monotonic()
    with env_pods(cfg) as pods:
        training = build_training(cfg, pods.discovery(), metrics=metrics)
        training.graceful_stop.install()
        try:
            final = run_training(training, cfg)
        finally:
            training.close()
        if final is None:
            log.info("stopped by SIGTERM after step %d", training.trainer.state.global_step)
            return EXIT_TERMINATED
        log.info("training done in %.0f s; policy saved to %s", time.monotonic() - started, final)
        del training
        gc.collect()
        if evaluate_after and cfg.eval.after_training:
            _evaluate(cfg, final, pods)
    log.info("total wall time %.0f s", time.monotonic() - started)
    return 0


def _evaluate(cfg: TrainerConfig, final, pods) -> None:
    from services.trainer.evaluation.run import compare
    from services.trainer.loading import PolicySpec, trained_spec

    policies = [PolicySpec("base", cfg.model.source), trained_spec(final, cfg.model.source)]
    _, md_path = compare(cfg, policies, pods, cfg.run.output_dir / "eval")
    print(md_path.read_text(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.trainer", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "train with GRPO (then evaluate base vs trained)"),
        ("check", "validate a config and exit"),
    ):
        sub = commands.add_parser(name, help=help_text)
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "eval":
        return eval_cli.run_from_args(args)
    try:
        cfg = _config(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{' + '.join(args.config)}: OK")
        return 0
    return train(cfg, evaluate_after=not args.no_eval)
