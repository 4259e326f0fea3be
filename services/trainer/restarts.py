"""What makes a training run survive restarts: resuming from the newest complete checkpoint,
the curriculum's state inside every checkpoint, and a SIGTERM that finishes the step and saves.

A node drain, a preemption or ``helm upgrade`` SIGTERMs the trainer; the replacement resumes from
what was saved. The episode log is rewound by ``grpo.run_training``; the inference service is
taken back to the resumed version by ``policy_sync`` (``restart``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback

from services.trainer.config import TrainerConfig
from services.trainer.curriculum import Curriculum
from services.trainer.distributed import SINGLE, World, any_rank

log = logging.getLogger(__name__)
CURRICULUM_STATE = "curriculum.json"


class GracefulStop(TrainerCallback):
    """SIGTERM during training (a node drain, a deleted pod) finishes the running step, saves a
    checkpoint and stops, so the replacement resumes from it; a second SIGTERM, or one outside
    training, exits at once. ``install`` (main thread only) sets the signal handler. Under
    several processes the ranks agree at every step end, so all stop after the same step."""

    def __init__(self, world: World = SINGLE) -> None:
        self.world = world
        self.training = False
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, *_) -> None:
        if not self.training or self.requested:
            sys.exit(128 + signal.SIGTERM)
        self.requested = True
        log.warning("SIGTERM: finishing this step, saving a checkpoint, then stopping")

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_step_end(self, args, state, control, **kwargs):
        self.requested = any_rank(self.requested, self.world)
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False


class CurriculumCheckpoint(TrainerCallback):
    """Saves the curriculum's state into every checkpoint folder; a resume restores it."""

    def __init__(self, curriculum: Curriculum) -> None:
        self.curriculum = curriculum

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / CURRICULUM_STATE).write_text(json.dumps(self.curriculum.state_dict()))

    def restore(self, checkpoint: str | os.PathLike[str]) -> bool:
        path = Path(checkpoint) / CURRICULUM_STATE
        if not path.is_file():
            return False
        self.curriculum.load_state_dict(json.loads(path.read_text()))
        log.info("curriculum state restored from %s: %s", path, self.curriculum.weights())
        return True


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` whose save finished: TRL writes ``trainer_state.json`` after
    the weights and optimizer, so a save cut off by a kill (a node lost mid-save) has none and
    is skipped instead of crashing the resume."""
    found = sorted(
        (int(p.name.removeprefix("checkpoint-")), p)
        for p in output_dir.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit()
    )
    for _step, folder in reversed(found):
        try:
            checkpoint_step(folder)
        except (OSError, ValueError, KeyError):
            log.warning("skipping %s: its save did not finish (no trainer_state.json)", folder)
            continue
        return str(folder)
    return None


def resume_target(cfg: TrainerConfig) -> str | None:
    """``checkpoint.resume_from_checkpoint`` checked up front (True: newest in output_dir)."""
    target = cfg.checkpoint.resume_from_checkpoint
    if target is True:
        out = cfg.run.output_dir
        last = last_complete_checkpoint(out) if out.is_dir() else None
        if last is None:
            log.warning("resume_from_checkpoint: no checkpoint in %s yet, starting fresh", out)
        return last
    if isinstance(target, str) and not Path(target).is_dir():
        raise FileNotFoundError(f"checkpoint.resume_from_checkpoint: {target} is not a folder")
    return target or None


def checkpoint_step(checkpoint: str | os.PathLike[str]) -> int:
    """The optimizer step a checkpoint folder was saved at (TRL's ``trainer_state.json``)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state["global_step"])
