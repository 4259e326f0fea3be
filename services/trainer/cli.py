"""``python -m services.trainer``: train (and evaluate) from a YAML config, or evaluate alone.

    python -m services.trainer train --config services/trainer/configs/local_cpu.yaml
    python -m services.trainer train --config cfg.yaml --set grpo.max_steps=3 --no-eval
    python -m services.trainer check --config cfg.yaml     # validate only, start nothing
    python -m services.trainer eval --config cfg.yaml --trained auto

``train`` validates the whole config before it loads a model or starts a process, serves
``/metrics``, starts local env pods when ``env.local.pods > 0`` (the cluster shape as
processes), follows env discovery, trains with GRPO, saves ``final/``, then
(``eval.after_training``) measures base vs trained on held-out seeds and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import gc
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from services.trainer.config import ConfigError, TrainerConfig, load_config, parse_override

log = logging.getLogger("services.trainer")


def _config(args: argparse.Namespace) -> TrainerConfig:
    overrides = dict(parse_override(item) for item in args.set or [])
    return load_config(args.config, **overrides)


def local_pod_settings(cfg: TrainerConfig) -> dict:
    """Keyword arguments for the local env pods: the prompt's action subsets unless overridden."""
    return {"action_subsets": list(cfg.prompt.action_subsets), **cfg.env.local.extra}


@contextlib.contextmanager
def env_endpoints(cfg: TrainerConfig) -> Iterator[list[str]]:
    """Static endpoints plus local pods started for the run (stopped on exit)."""
    urls = list(cfg.env.endpoints)
    if cfg.env.local.pods == 0:
        yield urls
        return
    from services.env.local import start_local_env_pods

    log_dir = cfg.run.output_dir / "env-logs"
    log.info("starting %d local env pods (logs in %s)", cfg.env.local.pods, log_dir)
    with start_local_env_pods(
        cfg.env.local.pods,
        max_sessions=cfg.env.local.max_sessions,
        ready_timeout_s=300.0,  # Chromium starts slowly on a busy 2-core machine
        log_dir=log_dir,
        **local_pod_settings(cfg),
    ) as local:
        yield urls + list(local)


def _follow_discovery(cfg: TrainerConfig, training) -> None:
    """Kubernetes discovery: feed every EndpointSlice change to the env pool."""
    if cfg.env.discovery != "kubernetes":
        return
    from services.trainer.k8s_discovery import EndpointSliceDiscovery

    discovery = EndpointSliceDiscovery.from_env_config(cfg.env)
    training.rollout.loop.submit(discovery.watch(training.rollout.engine.pool.set_endpoints))


def _initial_endpoints(cfg: TrainerConfig, urls: list[str]) -> list[str]:
    if cfg.env.discovery != "kubernetes":
        return urls
    from services.trainer.k8s_discovery import EndpointSliceDiscovery

    discovered = asyncio.run(EndpointSliceDiscovery.from_env_config(cfg.env).current())
    return urls + discovered


def _install_signal_handlers() -> None:
    """SIGTERM (Kubernetes, kill) unwinds like Ctrl-C, so local env pods are stopped on the way
    out; ``kill -USR1 <pid>`` prints every thread's stack to stderr (a stuck run, diagnosed)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with contextlib.suppress(ValueError, OSError):  # stderr without a file descriptor
        faulthandler.register(signal.SIGUSR1)


def train(cfg: TrainerConfig, *, evaluate_after: bool) -> int:
    from services.trainer.grpo import build_training, run_training
    from services.trainer.metrics import TrainerMetrics, serve

    _install_signal_handlers()
    out = cfg.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    metrics = TrainerMetrics()
    if cfg.metrics.port is not None:
        port = serve(metrics, cfg.metrics.port, cfg.metrics.host)
        log.info("metrics at http://%s:%d/metrics", cfg.metrics.host, port)
    started = time.monotonic()
    with env_endpoints(cfg) as urls:
        endpoints = _initial_endpoints(cfg, urls)
        log.info("env endpoints: %s", ", ".join(endpoints) or "none yet")
        training = build_training(cfg, endpoints, metrics=metrics)
        try:
            _follow_discovery(cfg, training)
            final = run_training(training, cfg)
        finally:
            training.close()
        train_s = time.monotonic() - started
        log.info("training done in %.0f s; policy saved to %s", train_s, final)
        del training
        gc.collect()
        if evaluate_after and cfg.eval.after_training:
            _evaluate(cfg, final, endpoints)
    log.info("total wall time %.0f s", time.monotonic() - started)
    return 0


def _evaluate(cfg: TrainerConfig, final: Path, endpoints: list[str]) -> None:
    from services.trainer import evaluate

    settings = evaluate.EvalSettings.from_trainer_config(cfg)
    policies = [
        evaluate.PolicySpec("base", cfg.model.source),
        evaluate.trained_spec(final, cfg.model.source),
    ]
    _, md_path = evaluate.compare(
        policies, settings, endpoints, cfg.run.output_dir / "eval", cache_dir=cfg.model.cache_dir
    )
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
        sub.add_argument("--config", required=True, help="trainer YAML (configs/*.yaml)")
        sub.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set grpo.max_steps=3 (repeatable)",
        )
        if name == "train":
            sub.add_argument("--no-eval", action="store_true", help="skip the evaluation after")
    from services.trainer import evaluate

    evaluate.add_arguments(commands.add_parser("eval", help="evaluate base and/or trained"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "eval":
        return evaluate.run_from_args(args)
    try:
        cfg = _config(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.config}: OK")
        return 0
    return train(cfg, evaluate_after=not args.no_eval)
