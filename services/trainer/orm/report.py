"""How well a judge agrees with the checkers: accuracy, precision/recall, calibration, errors.

Every judge is measured on the same test examples: the trained ORM, the untrained base model
with the same prompt (zero-shot), and the majority verdict of the training split. Held-out seeds
(tasks trained on, pages never seen) and held-out tasks (never seen at all) are reported apart.

    python -m services.trainer orm eval --config cfg.yaml
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.trainer.orm.data import Example

log = logging.getLogger(__name__)
CALIBRATION_BINS = 10


def measures(labels: Sequence[bool], scores: Sequence[float]) -> dict[str, Any]:
    """Agreement of P(YES) scores (verdict: >= 0.5) with the checkers' labels."""
    verdicts = [s >= 0.5 for s in scores]
    tp = sum(v and y for v, y in zip(verdicts, labels, strict=True))
    fp = sum(v and not y for v, y in zip(verdicts, labels, strict=True))
    fn = sum(not v and y for v, y in zip(verdicts, labels, strict=True))
    n = len(labels)
    correct = sum(v == y for v, y in zip(verdicts, labels, strict=True))
    return {
        "n": n,
        "yes_share": sum(labels) / n if n else None,
        "accuracy": correct / n if n else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "false_yes": fp,
        "false_no": fn,
        "brier": sum((s - y) ** 2 for s, y in zip(scores, labels, strict=True)) / n if n else None,
        "ece": expected_calibration_error(labels, scores),
    }


def expected_calibration_error(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Mean |P(YES) - observed YES rate| over equal-width score bins, weighted by their size."""
    if not labels:
        return None
    bins: dict[int, list[tuple[float, bool]]] = {}
    for score, label in zip(scores, labels, strict=True):
        bins.setdefault(min(int(score * CALIBRATION_BINS), CALIBRATION_BINS - 1), []).append(
            (score, label)
        )
    gap = sum(abs(sum(s for s, _ in items) - sum(y for _, y in items)) for items in bins.values())
    return gap / len(labels)


def judge_report(
    judges: dict[str, Callable[[Sequence[Example]], list[float]]],
    splits: dict[str, list[Example]],
) -> dict[str, Any]:
    """Per split, per judge: the measures, and per task the errors of each judge."""
    report: dict[str, Any] = {}
    for split, items in splits.items():
        if not items:
            continue
        labels = [e.label for e in items]
        per_judge = {}
        for name, judge in judges.items():
            scores = judge(items)
            errors = Counter(
                (e.task, "false_yes" if s >= 0.5 else "false_no")
                for e, s in zip(items, scores, strict=True)
                if (s >= 0.5) != e.label
            )
            per_judge[name] = {
                **measures(labels, scores),
                "errors_by_task": {
                    task: {kind: errors[(task, kind)] for kind in ("false_yes", "false_no")}
                    for task in sorted({t for t, _ in errors})
                },
            }
            log.info("ORM eval %s %s: accuracy %.3f", split, name, per_judge[name]["accuracy"])
        report[split] = per_judge
    return report


def majority(train: Sequence[Example]) -> Callable[[Sequence[Example]], list[float]]:
    """The training split's more common verdict, for every example."""
    yes = sum(e.label for e in train) * 2 >= len(train)
    return lambda items: [1.0 if yes else 0.0] * len(items)


def render_markdown(report: dict[str, Any], data: dict[str, str] | None = None) -> str:
    header = "| split | judge | n | accuracy | precision | recall | ECE | Brier |"
    rows = [f"- {split}: {text}" for split, text in (data or {}).items()]
    rows += ["", header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for split, judges in report.items():
        for name, m in judges.items():
            rows.append(
                f"| {split} | {name} | {m['n']} | {_f(m['accuracy'])} | {_f(m['precision'])} | "
                f"{_f(m['recall'])} | {_f(m['ece'])} | {_f(m['brier'])} |"
            )
    return "\n".join(rows + _errors_table(report)) + "\n"


def _errors_table(report: dict[str, Any]) -> list[str]:
    """Per split and task, each judge's errors: false YES (a failure passed) / false NO."""
    judges = list(next(iter(report.values()), {}))
    if not judges:
        return []
    rows = ["", "Errors (false YES / false NO) by task:", ""]
    rows += ["| split | task | " + " | ".join(judges) + " |", "|---|---|" + "---|" * len(judges)]
    for split, by_judge in report.items():
        tasks = sorted({t for m in by_judge.values() for t in m["errors_by_task"]})
        for task in tasks:
            cells = []
            for name in judges:
                e = by_judge[name]["errors_by_task"].get(task, {"false_yes": 0, "false_no": 0})
                cells.append(f"{e['false_yes']} / {e['false_no']}")
            rows.append(f"| {split} | {task} | " + " | ".join(cells) + " |")
    return rows


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_report(report: dict[str, Any], folder: Path, data: dict[str, str] | None = None) -> Path:
    """``orm_eval.json`` (the measures, and ``data``: what each split held) and ``orm_eval.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orm_eval.json").write_text(json.dumps({"data": data, "splits": report}, indent=2))
    path = folder / "orm_eval.md"
    path.write_text(render_markdown(report, data))
    return path
