"""Training curves as PNG files, drawn from a run folder's ``metrics.jsonl`` (``MetricsLog``).

One figure per question a person asks of a run: is success going up on each task, are episodes
getting shorter and the actions valid, how far has the policy moved (loss, KL), where does the
time go (rollout vs update), which tasks does the curriculum favour, and did SFT converge. A
figure whose figures the run never logged (no GRPO stage, no curriculum) is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import matplotlib

from services.trainer.episode_log import StepRecords

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt

Records = list[dict]
SUMMARY_KEYS = {"train_loss", "train_runtime"}
"""Keys of TRL's end-of-training summary record (no step's figures)."""


def _steps(records: Records, stage: str) -> Records:
    """A stage's per-step records (the end-of-training summary is left out)."""
    return [r for r in records if r.get("stage") == stage and not SUMMARY_KEYS & r.keys()]


def _series(records: Records, key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _keys(records: Records, prefix: str) -> list[str]:
    return sorted({k for r in records for k in r if k.startswith(prefix)})


def _lines(ax, records: Records, keys: Sequence[str], label: Callable[[str], str] = str) -> bool:
    drawn = False
    for key in keys:
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, marker="o", markersize=3, label=label(key))
            drawn = True
    return drawn


def _success(ax, grpo: Records) -> bool:
    tasks = _keys(grpo, "success/")
    drawn = _lines(ax, grpo, tasks, lambda k: k.removeprefix("success/"))
    if _lines(ax, grpo, ["reward"], lambda _: "mean reward (all tasks)"):
        ax.lines[-1].set(color="black", linewidth=2.5)
        drawn = True
    ax.set(title="Success per task (sampled training episodes)", ylabel="success")
    ax.set_ylim(-0.05, 1.05)
    return drawn


def _pair(
    ax, records: Records, left: str, right: str, *, title: str, color: str, unit: bool = False
) -> bool:
    """Two series on one figure, ``right`` on its own axis (``unit``: a rate in [0, 1]);
    each given as ``key=label``."""
    (left_key, left_label), (right_key, right_label) = (x.split("=", 1) for x in (left, right))
    drawn = _lines(ax, records, [left_key], lambda _: left_label)
    twin = ax.twinx()
    if _lines(twin, records, [right_key], lambda _: right_label):
        twin.lines[-1].set(color=color)
        twin.set(ylabel=right_label)
        if unit:
            twin.set_ylim(-0.05, 1.05)
        twin.legend(loc="upper right", fontsize=8)
        drawn = True
    ax.set(title=title, ylabel=left_label)
    return drawn


def _timing(ax, grpo: Records) -> bool:
    steps, rollout = _series(grpo, "rollout/seconds")
    update = dict(zip(*_series(grpo, "update/seconds"), strict=True))
    if not steps:
        return False
    ax.bar(steps, rollout, label="rollout (generation + env)")
    ax.bar(steps, [update.get(s, 0.0) for s in steps], bottom=rollout, label="update")
    ax.set(title="Where each step's time goes", ylabel="seconds")
    return True


def _phase_eval(ax, measured: Records) -> bool:
    """Held-out seeds at each phase start (``evaluation/phase_eval.py``): the two means bold."""
    drawn = _lines(ax, measured, _keys(measured, "success/"), lambda k: k.removeprefix("success/"))
    for line in ax.lines:
        line.set(linewidth=1, alpha=0.6)
    means = {"trained": ("trained tasks", "-"), "held_out": ("held-out tasks", "--")}
    for key, (label, style) in means.items():
        if _lines(ax, measured, [key], lambda _, label=label: f"mean, {label}"):
            ax.lines[-1].set(color="black", linewidth=2.5, linestyle=style)
            drawn = True
    ax.set(title="Success on held-out seeds at each phase start (greedy)", ylabel="success")
    ax.set_ylim(-0.05, 1.05)
    return drawn


def _curriculum(ax, grpo: Records) -> bool:
    keys = _keys(grpo, "curriculum/")
    rows = [(r["step"], [r.get(k, 0.0) for k in keys]) for r in grpo if keys and keys[0] in r]
    if not rows:
        return False
    steps = [s for s, _ in rows]
    columns = list(zip(*(w for _, w in rows), strict=True))
    ax.stackplot(steps, columns, labels=[k.removeprefix("curriculum/") for k in keys])
    ax.set(title="Curriculum: share of groups per task", ylabel="weight", ylim=(0, 1))
    return True


# file name -> (stage, figure); the report shows them in this order
FIGURES: dict[str, tuple[str, Callable]] = {
    "success.png": ("grpo", _success),
    "episodes.png": (
        "grpo",
        partial(
            _pair,
            left="rollout/episode_turns=turns per episode",
            right="rollout/invalid_action_rate=invalid-action rate",
            title="Episode length and invalid actions",
            color="tab:red",
            unit=True,
        ),
    ),
    "loss_kl.png": (
        "grpo",
        partial(
            _pair,
            left="loss=loss",
            right="kl=KL to the reference",
            title="GRPO loss and KL",
            color="tab:purple",
        ),
    ),
    "timing.png": ("grpo", _timing),
    "curriculum.png": ("grpo", _curriculum),
    "phase_eval.png": ("phase_eval", _phase_eval),
    "sft.png": (
        "sft",
        partial(
            _pair,
            left="loss=loss (action tokens)",
            right="mean_token_accuracy=action-token accuracy",
            title="SFT warm-up",
            color="tab:green",
            unit=True,
        ),
    ),
}


def draw_plots(metrics_file: Path, out_dir: Path) -> list[Path]:
    """Every figure the run has figures for, as ``out_dir/<name>.png``; the files written."""
    records = StepRecords(metrics_file).read()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (stage, draw) in FIGURES.items():
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        try:
            if not draw(ax, _steps(records, stage)):
                continue
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left", fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / name)
            written.append(out_dir / name)
        finally:
            plt.close(fig)
    return written
