"""Demonstrations: successful episodes, saved as trajectories, for the SFT warm-up.

Three sources write the same records (``services/protocol/trajectory.py``), through the same
rollout stack as training, so a demonstration's token sequence is the one the policy is trained
on:

- ``scripted``: the env pods' task solvers answer each turn (the ``demonstrate`` message; the
  MiniWoB family has solvers for the reading tasks in ``services/env/families/miniwob/solvers.py``);
- ``rejection``: the policy itself (``generation.backend``) samples at ``demos.temperature``;
  only successes are kept (filtered behaviour cloning);
- ``teacher``: the same with a stronger model behind ``generation.backend`` (any model a vLLM
  server serves); its records carry the teacher's tokenizer, and the SFT stage re-renders them
  for the student from the turns' pages and actions.

    python -m services.trainer demos --config cfg.yaml [--set demos.source=rejection]
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from services.trainer.config import TrainerConfig
from services.trainer.envs import EnvPods
from services.trainer.generation import BackendContext, build_backend
from services.trainer.rollout import EpisodeRequest
from services.trainer.stack import RolloutProtocol, RolloutStack
from services.trainer.trajectories import TrajectoryWriter

log = logging.getLogger(__name__)


def demo_requests(cfg: TrainerConfig) -> list[EpisodeRequest]:
    """``demos.episodes_for(task)`` pages of every training task, seeds from
    ``demos.seed_start``."""
    start = cfg.demos.seed_start
    return [
        EpisodeRequest(task, seed)
        for task in cfg.tasks.names
        for seed in range(start, start + cfg.demos.episodes_for(task))
    ]


def sampling_protocol(cfg: TrainerConfig, prompts) -> RolloutProtocol:
    """Training's protocol at the demonstrations' temperature."""
    training = RolloutProtocol.training(cfg, prompts)
    return replace(training, sampling=replace(training.sampling, temperature=cfg.demos.temperature))


def players(cfg: TrainerConfig) -> tuple[str, object | None, object]:
    """(policy name, in-process model or None, tokenizer) of whoever plays the demonstrations:
    the student's tokenizer for scripted and rejection, the teacher's for a teacher."""
    from transformers import AutoTokenizer

    from services.trainer.loading import load_for_training

    source = cfg.demos.source
    if source == "scripted":
        return (
            "scripted solvers",
            None,
            AutoTokenizer.from_pretrained(_folder(cfg.model.source, cfg)),
        )
    if source == "teacher":
        return (
            cfg.demos.teacher,
            None,
            AutoTokenizer.from_pretrained(_folder(cfg.demos.teacher, cfg)),
        )
    if cfg.generation.backend.type == "local":
        model, tokenizer, _ = load_for_training(cfg)
        return cfg.model.source, model, tokenizer
    return cfg.model.source, None, AutoTokenizer.from_pretrained(_folder(cfg.model.source, cfg))


def _folder(source: str, cfg: TrainerConfig) -> Path:
    from services.trainer.models import resolve_model

    return resolve_model(source, cfg.model.cache_dir.expanduser())


def generate_demos(cfg: TrainerConfig, pods: EnvPods) -> Path:
    """Play the demonstration episodes and save the successes; the folder they are in."""
    source = cfg.demos.source
    policy, model, tokenizer = players(cfg)
    backend = None
    if source != "scripted":
        context = BackendContext(tokenizer=tokenizer, model=(lambda: model) if model else None)
        backend = build_backend(cfg.generation.backend, context)
    stack = RolloutStack(
        cfg,
        tokenizer,
        backend,
        pods.discovery(),
        protocol=sampling_protocol,
        policy_name=policy,
        demonstrate=source == "scripted",
    )
    requests = demo_requests(cfg)
    started = time.monotonic()
    finished = Counter[bool]()

    def progress(episode) -> None:
        finished[episode.success] += 1
        done = finished.total()
        if done % max(1, len(requests) // 10) == 0 or done == len(requests):
            log.info(
                "demonstrations: %d/%d episodes played, %d solved, %.0f s",
                done,
                len(requests),
                finished[True],
                time.monotonic() - started,
            )

    try:
        episodes = stack.play(requests, on_episode=progress)
        kept = [e for e in episodes if e.success]
        writer = TrajectoryWriter(cfg.demos_folder)
        writer.add(stack.records(kept, source))
        writer.flush()
    finally:
        stack.close()
    played = Counter(e.task for e in episodes if not e.dropped)
    solved = Counter(e.task for e in kept)
    log.info(
        "demonstrations (%s): kept %d of %d episodes in %.0f s into %s; per task: %s",
        source,
        len(kept),
        len(episodes),
        time.monotonic() - started,
        cfg.demos_folder,
        ", ".join(f"{t} {solved[t]}/{played[t]}" for t in cfg.tasks.names),
    )
    return cfg.demos_folder
