"""Experiment trackers: ``run.report_to`` goes to TRL's (transformers') own integrations, and our
rollout figures reach them through TRL's per-step metrics (``trl_compat.log_step_metrics``), so a
tracker shows per-task success beside TRL's loss and KL. Each tracker is a pyproject extra,
installed only when asked for; a missing one stops the run before any model loads."""

from __future__ import annotations

import importlib.util
import os

from services.trainer.config import ConfigError, RunConfig

# tracker -> the module transformers' integration imports (the pyproject extra has its name)
MODULES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def report_to(run: RunConfig) -> list[str]:
    """``run.report_to`` checked installed, for ``TrainingArguments.report_to``. trackio keeps
    its local database in ``<output_dir>/trackio`` unless ``TRACKIO_DIR`` says otherwise."""
    trackers = run.report_to
    missing = [t for t in trackers if importlib.util.find_spec(MODULES[t]) is None]
    if missing:
        extras = ",".join(missing)
        raise ConfigError(
            f"run.report_to names {', '.join(missing)}, which is not installed: "
            f"pip install -c constraints.txt -e '.[{extras}]' (or drop it from run.report_to)"
        )
    if "trackio" in trackers:
        os.environ.setdefault("TRACKIO_DIR", str(run.output_dir.resolve() / "trackio"))
    return list(trackers)
