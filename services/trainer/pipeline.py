"""``train``: the stages of a run, each optional, in order: demonstrations → SFT → GRPO → eval.

- demonstrations (``demos``): generated when the SFT stage needs data and ``sft.datasets`` names
  none and the demos folder holds none yet;
- SFT (``sft.enabled``): the warm-up, whose merged model is where GRPO starts;
- GRPO (``grpo.max_steps > 0``);
- evaluation (``eval.after_training``): the base model (``model.source``) beside the final policy
  on held-out seeds.
Env pods (local ones started here, or discovered) serve every stage.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from services.trainer import distributed
from services.trainer.config import TrainerConfig, dump_config
from services.trainer.distributed import SINGLE, World
from services.trainer.envs import EnvPods, env_pods
from services.trainer.metrics import TrainerMetrics, serve
from services.trainer.trackers import report_to
from services.trainer.trajectories import SHARD_PATTERN

if TYPE_CHECKING:
    from services.trainer.evaluation.report import PolicyReport

log = logging.getLogger("services.trainer")
EXIT_TERMINATED = 128 + signal.SIGTERM


def sft_data(
    cfg: TrainerConfig, pods: EnvPods, metrics: TrainerMetrics | None = None
) -> list[Path]:
    """The SFT stage's trajectories: the configured datasets, or the demos (made if missing)."""
    if cfg.sft.datasets:
        return cfg.sft_sources
    shards = sorted(cfg.demos_folder.glob(SHARD_PATTERN))
    if shards:
        log.info(
            "demonstrations: reusing %d shard(s) in %s (delete the folder to play them again)",
            len(shards),
            cfg.demos_folder,
        )
    else:
        from services.trainer.demos import generate_demos

        if metrics is not None:
            metrics.stage_started("demos")
        generate_demos(cfg, pods)
    return cfg.sft_sources


def grpo(
    cfg: TrainerConfig, pods: EnvPods, metrics: TrainerMetrics, world: World = SINGLE
) -> Path | None:
    """The GRPO stage; its final policy (None: stopped by SIGTERM, checkpoint saved)."""
    from services.trainer.grpo import build_training, run_training

    training = build_training(cfg, pods.discovery(), metrics=metrics, world=world)
    training.graceful_stop.install()
    try:
        return run_training(training, cfg)
    finally:
        training.close()


def run(cfg: TrainerConfig, *, evaluate_after: bool, world: World = SINGLE) -> int:
    """Every configured stage; the process exit status. Under several trainer processes
    (``distributed.py``) every rank trains and rank 0 alone does the rest."""
    out = cfg.run.output_dir
    metrics = TrainerMetrics()
    started = time.monotonic()
    evaluating = evaluate_after and cfg.eval.after_training and world.main
    before = None
    # One /metrics per node (pod): rank 0's carries the run; another node's first process
    # answers the pod's probes with its process figures.
    if world.local_rank == 0 and cfg.metrics.port is not None:
        port = serve(metrics, cfg.metrics.port, cfg.metrics.host)
        log.info("metrics at http://%s:%d/metrics", cfg.metrics.host, port)
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
        log.info("plan: %s", plan(cfg, evaluate_after, world))
        # A base report that cannot be reused fails now, not after training.
        if evaluating and cfg.eval.base_results is not None:
            before = reused_base(cfg)
    report_to(cfg.run)  # and so does a tracker that is not installed
    pods_of_this_rank = env_pods(cfg) if world.main else nullcontext(EnvPods(cfg.env.discovery))
    with pods_of_this_rank as pods:
        start = cfg
        final = None
        if cfg.sft.enabled:
            from services.trainer.sft import run_sft

            if world.main:
                sft_data(cfg, pods, metrics)
            distributed.barrier(world)  # the demonstrations are on disk for every rank
            metrics.stage_started("sft")
            final = run_sft(cfg, cfg.sft_sources, metrics=metrics, world=world)
            log.info("SFT done after %.0f s; model in %s", time.monotonic() - started, final)
            start = cfg.after_sft(final)
            gc.collect()
        if cfg.grpo.max_steps > 0:
            metrics.stage_started("grpo")
            final = grpo(start, pods, metrics, world)
            if final is None:
                log.info("stopped by SIGTERM: the checkpoint is saved, the next start resumes")
                return EXIT_TERMINATED
            log.info("training done after %.0f s; policy in %s", time.monotonic() - started, final)
        gc.collect()
        distributed.stop(world)  # the ranks' work together ends here: rank 0 evaluates alone
        if final is not None and evaluating:
            metrics.stage_started("eval")
            evaluate(cfg, start, final, pods, before)
    log.info("total wall time %.0f s", time.monotonic() - started)
    if not world.main:
        return 0
    from services.trainer.run_report import write_report

    log.info("report (evaluation, training curves, episodes): %s", write_report(out))
    return 0


def plan(cfg: TrainerConfig, evaluate_after: bool, world: World = SINGLE) -> str:
    """The stages this config will run, with their budgets (and the time they took elsewhere)."""
    tasks = len(cfg.tasks.names)
    stages = [f"{world.size} trainer processes"] if world.distributed else []
    if cfg.sft.enabled:
        if not cfg.sft.datasets:
            d = cfg.demos
            episodes = sum(d.episodes_for(task) for task in cfg.tasks.names)
            stages.append(f"demonstrations ({d.source}, {episodes} episodes over {tasks} tasks)")
        taught = f", teaching {cfg.sft.prompt_format} prompts" if cfg.sft.prompt_format else ""
        epochs = f"{cfg.sft.epochs:g} epoch" + ("" if cfg.sft.epochs == 1 else "s")
        stages.append(f"SFT ({epochs}{taught})")
    g = cfg.grpo
    if g.max_steps:
        extras = [f"KL {g.beta:g} to the phase start"] if g.beta else []
        extras += [f"phases of {g.phase_steps} steps"] if g.phase_steps else []
        extras += ["replay"] if cfg.replay.enabled else []
        if cfg.eval.phase_seeds:
            extras.append(
                f"{cfg.eval.phase_seeds} held-out seeds x {len(cfg.eval_tasks)} tasks "
                "at each phase start"
            )
        stages.append(
            f"GRPO ({g.max_steps} steps x {g.samples_per_step} episodes"
            + "".join(f"; {e}" for e in extras)
            + ")"
        )
    if evaluate_after and cfg.eval.after_training:
        who = "final; base from eval.base_results" if cfg.eval.base_results else "base and final"
        stages.append(
            f"evaluation ({who}, {len(cfg.eval_tasks)} tasks x {cfg.eval.seeds_per_task} seeds)"
        )
    expected = cfg.run.expected_minutes
    return " -> ".join(stages) + (
        f"; about {expected:.0f} min where it was measured (BENCHMARKS.md)" if expected else ""
    )


def evaluate(
    cfg: TrainerConfig,
    start: TrainerConfig,
    final: Path,
    pods: EnvPods,
    before: PolicyReport | None = None,
) -> None:
    """The base model beside the final policy (an adapter goes on the model GRPO started from,
    ``start``, and the policy reads the prompts it was trained with); ``before``: the base's
    report, already measured (``reused_base``), so the base is not measured again."""
    from services.trainer.evaluation.run import compare
    from services.trainer.loading import PolicySpec, trained_spec

    trained = trained_spec(final, start.model.source, prompt_format=start.model.prompt_format)
    policies = [trained] if before is not None else [PolicySpec("base", cfg.model.source), trained]
    _, md_path = compare(cfg, policies, pods, cfg.run.output_dir / "eval", before=before)
    print(md_path.read_text(), flush=True)


def reused_base(cfg: TrainerConfig) -> PolicyReport:
    """The base model's report from ``eval.base_results`` (checked: same model, same protocol)."""
    from services.trainer.evaluation.report import EvalSettings, base_report

    report = base_report(cfg.eval.base_results, EvalSettings.of(cfg), model=cfg.model.source)
    log.info(
        "base model: its report is reused from %s (it took %.0f s to measure; "
        "eval.base_results=null measures it again)",
        cfg.eval.base_results,
        report.wall_s,
    )
    return report
