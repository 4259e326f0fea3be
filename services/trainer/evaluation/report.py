"""Evaluation results: per-task scores, per-episode records, and the reports written to disk.

``eval.json`` holds the settings, per-task scores and every episode's actions; ``eval.md`` a
per-task table, policies side by side, with the published reference numbers for context.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.trainer.prompts import page_rendering
from services.trainer.rollout import Episode

#: BrowserGym MiniWoB protocol (AgentLab): 125 tasks × 5 seeds, max 10 steps, binary reward.
PUBLISHED_REFERENCE = {
    "protocol": "BrowserGym MiniWoB, all 125 tasks x 5 seeds, max 10 steps, binary reward",
    "success_rate": {
        "Claude-3.5-Sonnet": 0.698,
        "o1-mini": 0.678,
        "GPT-4o": 0.656,
        "Llama-3.1-405B": 0.646,
        "Llama-3.1-70B": 0.576,
        "GPT-4o-mini": "0.54-0.59",
    },
}


class EvalError(ValueError):
    """The evaluation cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class EvalSettings:
    """What was measured and how (from the trainer config's ``eval`` section and its tasks)."""

    tasks: tuple[str, ...]
    seeds_per_task: int
    seed_start: int
    max_turns: int
    temperature: float
    max_new_tokens: int
    trained_tasks: tuple[str, ...] = ()
    """The run's training tasks: the others in ``tasks`` are held-out tasks, reported apart."""
    page_rendering: str = ""
    """``prompts.page_rendering``: how the prompts showed each page."""

    @classmethod
    def of(cls, cfg) -> EvalSettings:
        ev = cfg.eval
        return cls(
            tasks=tuple(cfg.eval_tasks),
            seeds_per_task=ev.seeds_per_task,
            seed_start=ev.seed_start,
            max_turns=ev.max_turns,
            temperature=ev.temperature,
            max_new_tokens=cfg.generation.max_new_tokens,
            trained_tasks=tuple(cfg.tasks.names),
            page_rendering=page_rendering(cfg.prompt.compact_axtree, cfg.prompt.axtree_max_tokens),
        )

    @property
    def held_out_tasks(self) -> tuple[str, ...]:
        """Evaluated tasks the policy never trained on (none when nothing says what it trained)."""
        if not self.trained_tasks:
            return ()
        return tuple(t for t in self.tasks if t not in self.trained_tasks)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed_start, self.seed_start + self.seeds_per_task))


@dataclass
class TaskScore:
    """One task's result for one policy. Dropped episodes (infrastructure) are not scored."""

    task: str
    episodes: int
    successes: int
    dropped: int
    mean_turns: float
    invalid_action_rate: float

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.episodes if self.episodes else None


@dataclass
class EpisodeRecord:
    task: str
    seed: int
    reward: float
    outcome: str
    turns: int
    actions: list[str]
    invalid_actions: int
    infra_retries: int
    goal: str = ""
    frames: dict | None = None
    """Where its screenshots are (``frames.FrameWriter.write``), when they were kept."""


@dataclass
class PolicyReport:
    """One policy measured with one ``EvalSettings``."""

    label: str
    model: str
    adapter: str | None
    scores: dict[str, TaskScore]
    wall_s: float
    episodes: list[EpisodeRecord] = field(default_factory=list)
    prompt_format: str | None = None

    @property
    def mean_success(self) -> float | None:
        return self.mean_over(self.scores)

    def mean_over(self, tasks: Sequence[str]) -> float | None:
        """Mean success rate over ``tasks`` (those measured)."""
        scores = [self.scores.get(t) for t in tasks]
        rates = [s.success_rate for s in scores if s is not None and s.success_rate is not None]
        return sum(rates) / len(rates) if rates else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for task, score in self.scores.items():
            data["scores"][task]["success_rate"] = score.success_rate
        data["mean_success"] = self.mean_success
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyReport:
        scores = {
            task: TaskScore(**{k: v for k, v in s.items() if k != "success_rate"})
            for task, s in data["scores"].items()
        }
        return cls(
            label=data["label"],
            model=data["model"],
            adapter=data.get("adapter"),
            scores=scores,
            wall_s=data["wall_s"],
            episodes=[EpisodeRecord(**e) for e in data.get("episodes", [])],
            prompt_format=data.get("prompt_format"),
        )


def score_episodes(
    episodes: Sequence[Episode], tasks: Sequence[str]
) -> tuple[dict[str, TaskScore], list[EpisodeRecord]]:
    """Per-task scores (an episode's success is the task's verdict) and per-episode records."""
    scores = {}
    for task in tasks:
        mine = [e for e in episodes if e.task == task]
        played = [e for e in mine if not e.dropped]
        actions = sum(e.turns for e in played)
        scores[task] = TaskScore(
            task=task,
            episodes=len(played),
            successes=sum(1 for e in played if e.success),
            dropped=len(mine) - len(played),
            mean_turns=sum(e.turns for e in played) / len(played) if played else 0.0,
            invalid_action_rate=(
                sum(e.invalid_actions for e in played) / actions if actions else 0.0
            ),
        )
    records = [EpisodeRecord(**e.facts()) for e in episodes]
    return scores, records


def _cell(score: TaskScore | None) -> str:
    if score is None or score.success_rate is None:
        return "n/a"
    dropped = f", {score.dropped} dropped" if score.dropped else ""
    return f"{score.success_rate:.2f} ({score.successes}/{score.episodes}{dropped})"


def render_markdown(reports: Sequence[PolicyReport], settings: EvalSettings) -> str:
    """Per-task table, one column per policy (+ the change when there are exactly two)."""
    decoding = "greedy" if settings.temperature == 0 else f"temperature {settings.temperature}"
    lines = [
        f"Tasks: {len(settings.tasks)} x {settings.seeds_per_task} held-out seeds "
        f"({settings.seed_start}..{settings.seed_start + settings.seeds_per_task - 1}), "
        f"max {settings.max_turns} steps, binary reward, {decoding}.",
        "",
    ]
    delta = len(reports) == 2
    header = ["task", *(r.label for r in reports)] + (["change"] if delta else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    held_out = settings.held_out_tasks
    trained = [t for t in settings.tasks if t not in held_out]
    for task in settings.tasks:
        name = f"{task} (held out)" if task in held_out else task
        row = [name, *(_cell(r.scores.get(task)) for r in reports)]
        if delta:
            a, b = (r.scores.get(task) for r in reports)
            rates = [s.success_rate if s else None for s in (a, b)]
            row.append("n/a" if None in rates else f"{rates[1] - rates[0]:+.2f}")
        lines.append("| " + " | ".join(row) + " |")
    groups = [("mean over tasks", settings.tasks)]
    if held_out:
        groups = [("mean, trained tasks", trained), ("mean, held-out tasks", held_out)]
    for title, tasks in groups:
        means = [r.mean_over(tasks) for r in reports]
        row = [f"**{title}**", *("n/a" if m is None else f"**{m:.3f}**" for m in means)]
        if delta:
            row.append("n/a" if None in means else f"{means[1] - means[0]:+.3f}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Wall time: " + ", ".join(f"{r.label} {r.wall_s:.0f} s" for r in reports) + ". "
        "Invalid-action rate: "
        + ", ".join(f"{r.label} {_invalid_rate(r):.2f}" for r in reports)
        + "."
    )
    formats = [f"{r.label} {r.prompt_format}" for r in reports if r.prompt_format]
    if formats:
        lines[-1] += " Prompt format: " + ", ".join(formats) + "."
    published = ", ".join(f"{k} {v}" for k, v in PUBLISHED_REFERENCE["success_rate"].items())
    lines.append("")
    lines.append(
        f"For context, published ({PUBLISHED_REFERENCE['protocol']}; a different, much wider "
        f"task set): {published}."
    )
    return "\n".join(lines) + "\n"


def _invalid_rate(report: PolicyReport) -> float:
    actions = sum(e.turns for e in report.episodes if e.outcome != "dropped")
    invalid = sum(e.invalid_actions for e in report.episodes if e.outcome != "dropped")
    return invalid / actions if actions else 0.0


def write_reports(
    reports: Sequence[PolicyReport], settings: EvalSettings, out_dir: str | Path
) -> tuple[Path, Path]:
    """``eval.json`` and ``eval.md`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": asdict(settings),
        "reports": [r.to_dict() for r in reports],
        "published_reference": PUBLISHED_REFERENCE,
    }
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(render_markdown(reports, settings))
    return json_path, md_path


def load_reports(path: str | Path) -> tuple[dict[str, Any], list[PolicyReport]]:
    """Settings (as a dict) and reports of an earlier ``eval.json``."""
    try:
        data = json.loads(Path(path).read_text())
        return data["settings"], [PolicyReport.from_dict(r) for r in data["reports"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"{path}: not a readable eval.json ({exc})") from exc


def base_report(path: str | Path, settings: EvalSettings, model: str | None = None) -> PolicyReport:
    """The base report of an earlier ``eval.json``, if it was measured the same way (and, when
    ``model`` is given, of that model): greedy decoding makes it the same measurement."""
    previous_settings, reports = load_reports(path)
    keys = (
        "seeds_per_task",
        "seed_start",
        "max_turns",
        "temperature",
        "max_new_tokens",
        "page_rendering",
    )
    same = {k: previous_settings.get(k) for k in keys}
    wanted = {k: getattr(settings, k) for k in same}
    redo = "set eval.base_results to null to measure the base model again"
    if same != wanted or not set(settings.tasks) <= set(previous_settings.get("tasks", [])):
        raise EvalError(
            f"{path} was measured with other settings ({same}, tasks "
            f"{previous_settings.get('tasks')}); it cannot stand beside this run ({wanted}): {redo}"
        )
    base = next((r for r in reports if r.label == "base"), reports[0])
    if model is not None and base.model != model:
        raise EvalError(f"{path} measured {base.model}, this run's base is {model}: {redo}")
    base.scores = {t: base.scores[t] for t in settings.tasks if t in base.scores}
    return base
