"""Measuring policies: each through the trainer's own rollout stack, on held-out seeds.

``evaluate_backend`` plays every (task, held-out seed) of the config's ``eval`` section with a
given generation backend; ``evaluate_policy`` first makes that backend for a ``PolicySpec``: the
policy loaded in this process (``generation.backend.type: local``), or the configured server
(``remote``, e.g. the vLLM service, which is what makes a 125-task protocol run practical), or the
rule-based ``scripted`` policy. ``compare`` measures several policies and writes the reports.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.trainer.config import TrainerConfig
from services.trainer.discovery import Discovery
from services.trainer.envs import EnvPods
from services.trainer.evaluation.report import (
    EvalSettings,
    PolicyReport,
    score_episodes,
    write_reports,
)
from services.trainer.frames import FrameWriter
from services.trainer.generation import BackendContext, build_backend
from services.trainer.generation.base import GenerationBackend
from services.trainer.loading import PolicySpec, load_for_generation
from services.trainer.rollout import Episode, EpisodeRequest
from services.trainer.stack import RolloutProtocol, RolloutStack
from services.trainer.trajectories import TrajectoryWriter

log = logging.getLogger(__name__)


def eval_requests(settings: EvalSettings, frame_seeds: int = 0) -> list[EpisodeRequest]:
    """Task-major list of (task, held-out seed) episodes; the first ``frame_seeds`` seeds of
    each task keep their frames."""
    return [
        EpisodeRequest(task=t, seed=s, frames=n < frame_seeds)
        for t in settings.tasks
        for n, s in enumerate(settings.seeds)
    ]


def evaluate_backend(
    cfg: TrainerConfig,
    backend: GenerationBackend,
    tokenizer: Any,
    discovery: Discovery,
    *,
    label: str,
    model: str,
    adapter: str | None = None,
    trajectories: TrajectoryWriter | None = None,
    frames: FrameWriter | None = None,
) -> PolicyReport:
    """Measure one policy, given as a generation backend (+ its tokenizer), on the env pods;
    with ``trajectories``, every played episode is saved there too, with ``frames`` every
    turn's screenshot."""
    settings = EvalSettings.of(cfg)
    requests = eval_requests(settings, cfg.eval.frame_seeds if frames is not None else 0)
    finished = 0

    def progress(episode: Episode) -> None:
        nonlocal finished
        finished += 1
        log.info(
            "[%d/%d] %s seed %d: %s after %d turns %s",
            finished,
            len(requests),
            episode.task,
            episode.seed,
            episode.outcome,
            episode.turns,
            episode.actions[-3:],
        )

    started = time.monotonic()
    stack = RolloutStack(
        cfg, tokenizer, backend, discovery, protocol=RolloutProtocol.evaluation, policy_name=model
    )
    try:
        episodes = stack.play(requests, on_episode=progress)
        if trajectories is not None:
            trajectories.add(stack.records(episodes, "evaluation"))
            trajectories.flush()
    finally:
        stack.close()
    scores, records = score_episodes(episodes, settings.tasks)
    if frames is not None:
        for record, episode in zip(records, episodes, strict=True):
            record.frames = frames.write(episode)
    return PolicyReport(
        label=label,
        model=model,
        adapter=adapter,
        prompt_format=stack.prompts.format,
        scores=scores,
        wall_s=round(time.monotonic() - started, 1),
        episodes=records,
    )


def evaluate_policy(
    cfg: TrainerConfig,
    spec: PolicySpec,
    discovery: Discovery,
    trajectories: TrajectoryWriter | None = None,
    frames: FrameWriter | None = None,
) -> PolicyReport:
    """Measure ``spec`` with the configured generation backend, in its own prompt format;
    in-process weights are freed after."""
    if spec.prompt_format is not None:
        cfg = cfg.with_model(prompt_format=spec.prompt_format)
    cache_dir = cfg.model.cache_dir.expanduser()
    if cfg.generation.backend.type == "local":
        loaded = dict(
            zip(("model", "tokenizer"), load_for_generation(spec, cache_dir), strict=True)
        )
        context = BackendContext(tokenizer=loaded["tokenizer"], model=lambda: loaded["model"])
    else:
        loaded = {"tokenizer": _tokenizer(spec, cache_dir)}
        context = BackendContext(tokenizer=loaded["tokenizer"])
    try:
        backend = build_backend(cfg.generation.backend, context)
        return evaluate_backend(
            cfg,
            backend,
            loaded["tokenizer"],
            discovery,
            label=spec.label,
            model=spec.model,
            adapter=spec.adapter,
            trajectories=trajectories,
            frames=frames,
        )
    finally:
        loaded.clear()  # free the weights before the next policy loads
        gc.collect()


def _tokenizer(spec: PolicySpec, cache_dir: Path):
    from transformers import AutoTokenizer

    from services.trainer.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(spec.model, cache_dir))


def compare(
    cfg: TrainerConfig,
    policies: Sequence[PolicySpec],
    pods: EnvPods,
    out_dir: str | Path,
    *,
    before: PolicyReport | None = None,
) -> tuple[Path, Path]:
    """Measure each policy in turn (after ``before``, an earlier report), write both reports.

    Each policy gets its own rollout stack and a fresh discovery of the env pods, so pods that
    came or went since the run started are used as they are now.
    """
    reports = [before] if before is not None else []
    for spec in policies:
        adapter = f" + adapter {spec.adapter}" if spec.adapter else ""
        log.info("evaluating %s (%s%s)", spec.label, spec.model, adapter)
        trajectories = (
            TrajectoryWriter(Path(out_dir) / "trajectories" / spec.label)
            if cfg.eval.save_trajectories
            else None
        )
        keep = cfg.eval.frame_seeds > 0
        frames = FrameWriter(Path(out_dir), f"frames/{spec.label}") if keep else None
        report = evaluate_policy(cfg, spec, pods.discovery(), trajectories, frames)
        log.info("%s: mean success %s in %.0f s", spec.label, report.mean_success, report.wall_s)
        reports.append(report)
    json_path, md_path = write_reports(reports, EvalSettings.of(cfg), out_dir)
    log.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path
