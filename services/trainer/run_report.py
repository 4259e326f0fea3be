"""``python -m services.trainer report RUN_DIR``: one HTML file that shows what a run did.

It holds the evaluation (per task, base beside the final policy; every held-out page with each
policy's actions side by side, and its filmstrip: the page of each turn with the element the
action hit outlined, plus a GIF to share), the training curves (``plots.py``, also left as PNG
files in ``<run>/plots``), the training episodes (with filmstrips on the steps that kept frames)
and every trajectory dataset in the folder, all filtered by task and outcome. Images are
inlined (filmstrips are built when opened), so the file can be mailed or attached as it is.
"""

from __future__ import annotations

import base64
import functools
import html
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from services.protocol.trajectory import TurnRecord
from services.trainer.episode_log import StepRecords
from services.trainer.evaluation.report import (
    EpisodeRecord,
    EvalError,
    PolicyReport,
    load_reports,
)
from services.trainer.plots import draw_plots
from services.trainer.progress import METRICS_FILE
from services.trainer.trajectories import SHARD_PATTERN, read_trajectories

REPORT_FILE = "report.html"
MAX_TRAINING_EPISODES = 2000
"""The newest training episodes listed (a long run's older ones stay in episodes.jsonl)."""
MAX_DATASET_RECORDS = 300
"""Records listed per trajectory dataset (the first ones; the dataset keeps them all)."""

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; text-align: left; }
tr:nth-child(even) { background: #f6f6f6; } th { background: #eee; }
.success { color: #17803d; font-weight: 600; } .failure, .truncated { color: #b42318; }
.up { color: #17803d; } .down { color: #b42318; }
code { font-size: 12px; background: #f2f2f2; padding: 1px 4px; border-radius: 3px; }
.filters { position: sticky; top: 0; background: #fff; padding: 8px 0; z-index: 1; }
.plots img { width: 49%; min-width: 420px; }
.muted { color: #777; }
.strip { display: flex; flex-wrap: wrap; gap: 8px; margin: 6px 0; }
.strip figure { margin: 0; font-size: 11px; max-width: 340px; }
.shot { position: relative; display: inline-block; border: 1px solid #ccc; line-height: 0; }
.shot .box { position: absolute; border: 2px solid #e6003c; box-sizing: border-box; }
details summary { cursor: pointer; color: #2456a8; font-size: 12px; }
"""

_SCRIPT = """
function applyFilters() {
  const task = document.getElementById('task').value;
  const outcome = document.getElementById('outcome').value;
  let shown = 0;
  for (const row of document.querySelectorAll('tr[data-task]')) {
    const keep = (task === '' || row.dataset.task === task) &&
      (outcome === '' || row.dataset.outcome === outcome ||
       (outcome === 'changed' && row.dataset.changed === '1'));
    row.hidden = !keep;
    shown += keep;
  }
  document.getElementById('shown').textContent = shown + ' episodes shown';
}
function openFrames(event) {
  const details = event.target;
  const template = details.querySelector('template');
  if (details.open && template) {
    details.appendChild(template.content.cloneNode(true));
    template.remove();
  }
}
document.addEventListener('DOMContentLoaded', () => {
  for (const details of document.querySelectorAll('details.frames')) {
    details.addEventListener('toggle', openFrames);
  }
  for (const id of ['task', 'outcome']) {
    document.getElementById(id).addEventListener('change', applyFilters);
  }
  applyFilters();
});
"""


def write_report(run_dir: Path) -> Path:
    """``<run>/report.html`` and ``<run>/plots/*.png`` from what the run folder holds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder")
    plots = draw_plots(run_dir / METRICS_FILE, run_dir / "plots")
    trained, evaluation = _evaluation(run_dir / "eval" / "eval.json")
    training = StepRecords(run_dir / "episodes.jsonl").read()[-MAX_TRAINING_EPISODES:]
    tasks = sorted({e["task"] for e in training} | {e.task for r in evaluation for e in r.episodes})
    body = [
        f"<h1>Run {html.escape(run_dir.name)}</h1>",
        f'<p class="muted">{html.escape(str(run_dir.resolve()))}</p>',
        _scores_section(evaluation, trained),
        _plots_section(plots),
        _filters(tasks),
        _eval_episodes_section(evaluation, run_dir),
        _training_section(training, run_dir),
        _datasets_section(run_dir),
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(run_dir.name)}: browser-rl run</title><style>{_STYLE}</style>"
        f"<script>{_SCRIPT}</script></head><body>{''.join(body)}</body></html>"
    )
    out = run_dir / REPORT_FILE
    out.write_text(page)
    return out


def _evaluation(path: Path) -> tuple[list[str], list[PolicyReport]]:
    """(the run's training tasks, the policies' reports) of ``eval.json``, if there is one."""
    if not path.is_file():
        return [], []
    try:
        settings, reports = load_reports(path)
    except EvalError:
        return [], []
    return list(settings.get("trained_tasks", [])), reports


def _rate(report: PolicyReport, task: str) -> str:
    score = report.scores.get(task)
    if score is None or score.success_rate is None:
        return "n/a"
    return f"{score.success_rate:.2f} ({score.successes}/{score.episodes})"


def _scores_section(reports: Sequence[PolicyReport], trained: Sequence[str]) -> str:
    """Per task, each policy's success; means over the trained and the held-out tasks apart."""
    if not reports:
        return "<h2>Evaluation</h2><p>No evaluation in this run (eval/eval.json).</p>"
    tasks = list(dict.fromkeys(t for r in reports for t in r.scores))
    held_out = [t for t in tasks if trained and t not in trained]
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in reports)
    rows = []
    for task in tasks:
        cells = "".join(f"<td>{_rate(r, task)}</td>" for r in reports)
        name = f"{task} (held out)" if task in held_out else task
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}{_change(reports, task)}</tr>")
    groups = [("mean", tasks)]
    if held_out:
        kept = [t for t in tasks if t not in held_out]
        groups = [("mean, trained tasks", kept), ("mean, held-out tasks", held_out)]
    for title, group in groups:
        means = "".join(
            f"<td><b>{m:.3f}</b></td>" if (m := r.mean_over(group)) is not None else "<td>n/a</td>"
            for r in reports
        )
        rows.append(f"<tr><td><b>{title}</b></td>{means}<td></td></tr>")
    return (
        "<h2>Evaluation: held-out seeds, greedy</h2>"
        f"<table><tr><th>task</th>{head}<th>change</th></tr>{''.join(rows)}</table>"
    )


def _change(reports: Sequence[PolicyReport], task: str) -> str:
    first, last = (reports[0].scores.get(task), reports[-1].scores.get(task))
    if len(reports) < 2 or first is None or last is None:
        return "<td></td>"
    if first.success_rate is None or last.success_rate is None:
        return "<td></td>"
    delta = last.success_rate - first.success_rate
    kind = "up" if delta > 0 else "down" if delta < 0 else ""
    return f'<td class="{kind}">{delta:+.2f}</td>'


def _plots_section(plots: Sequence[Path]) -> str:
    if not plots:
        return "<h2>Training curves</h2><p>No training steps logged (metrics.jsonl).</p>"
    images = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}">'
        for p in plots
    )
    return f'<h2>Training curves</h2><div class="plots">{images}</div>'


def _filters(tasks: Sequence[str]) -> str:
    options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in tasks)
    return (
        '<div class="filters">Task <select id="task"><option value="">all</option>'
        f"{options}</select> Outcome <select id='outcome'><option value=''>all</option>"
        "<option value='success'>success</option><option value='failure'>failure</option>"
        "<option value='truncated'>truncated</option>"
        "<option value='changed'>changed from base</option></select> "
        '<span id="shown" class="muted"></span></div>'
    )


def _actions(actions: Sequence[str]) -> str:
    return " → ".join(f"<code>{html.escape(a)}</code>" for a in actions) or "<i>none</i>"


def _outcome(outcome: str) -> str:
    return f'<span class="{html.escape(outcome)}">{html.escape(outcome)}</span>'


def _eval_episodes_section(reports: Sequence[PolicyReport], run_dir: Path) -> str:
    """One row per (task, seed): each policy's outcome and actions side by side; the row's
    outcome (for the filter) is the last policy's, and it changed when one policy solved the
    page and another did not."""
    if not reports:
        return ""
    by_policy = [{(e.task, e.seed): e for e in r.episodes} for r in reports]
    keys = list(dict.fromkeys(k for episodes in by_policy for k in episodes))
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in reports)
    strip = functools.partial(_filmstrip, run_dir=run_dir, root=run_dir / "eval")
    rows = []
    for task, seed in keys:
        played = [episodes.get((task, seed)) for episodes in by_policy]
        solved = {e.outcome == "success" for e in played if e is not None}
        last = played[-1]
        cells = "".join(
            f"<td>{_outcome(e.outcome)} {_actions(e.actions)}{strip(e.frames)}</td>"
            if e
            else "<td>n/a</td>"
            for e in played
        )
        rows.append(
            f'<tr data-task="{html.escape(task)}" '
            f'data-outcome="{html.escape(last.outcome if last else "")}" '
            f'data-changed="{int(len(solved) > 1)}"><td>{html.escape(task)}</td>'
            f"<td>{seed}</td><td>{html.escape(_goal(played))}</td>{cells}</tr>"
        )
    return (
        "<h2>Evaluation episodes</h2>"
        f"<table><tr><th>task</th><th>seed</th><th>goal</th>{head}</tr>{''.join(rows)}</table>"
    )


def _goal(played: Sequence[EpisodeRecord | None]) -> str:
    return next((e.goal for e in played if e is not None and e.goal), "")


def _training_section(episodes: Sequence[dict], run_dir: Path) -> str:
    if not episodes:
        return "<h2>Training episodes</h2><p>None logged (episodes.jsonl).</p>"
    strip = functools.partial(_filmstrip, run_dir=run_dir, root=run_dir)
    rows = "".join(
        f'<tr data-task="{html.escape(e["task"])}" data-outcome="{html.escape(e["outcome"])}" '
        f'data-changed="0"><td>{e["step"]}</td><td>{html.escape(e["task"])}</td>'
        f"<td>{e['seed']}</td><td>{html.escape(e.get('goal', ''))}</td>"
        f"<td>{_outcome(e['outcome'])}</td>"
        f"<td>{_actions(e.get('actions', []))}{strip(e.get('frames'))}</td></tr>"
        for e in episodes
    )
    return (
        f"<h2>Training episodes (sampled, the newest {len(episodes)})</h2>"
        "<table><tr><th>step</th><th>task</th><th>seed</th><th>goal</th><th>outcome</th>"
        "<th>actions</th></tr>"
        f"{rows}</table>"
    )


def _filmstrip(frames: dict | None, run_dir: Path, root: Path) -> str:
    """The episode's pages, the element each action hit outlined, opened on demand (the images
    are inlined in a template, so a long report stays quick to load). ``root``: the folder
    the frame paths are relative to (the evaluation's, or the run's for training)."""
    if not frames or not frames.get("turns"):
        return ""
    figures = []
    for n, turn in enumerate(frames["turns"], start=1):
        path = root / turn["file"]
        if not path.is_file():
            continue
        kind = "jpeg" if path.suffix == ".jpg" else path.suffix.lstrip(".")
        data = base64.b64encode(path.read_bytes()).decode()
        target = turn.get("target") or {}
        box = target.get("box")
        outline = (
            f'<div class="box" style="left:{box[0] - 2}px;top:{box[1] - 2}px;'
            f'width:{box[2] + 4}px;height:{box[3] + 4}px"></div>'
            if box
            else ""
        )
        if turn["action"] is None:
            caption = "the page after the last action"
        else:
            element = f"{target.get('role', '')} '{target.get('name', '')}'" if target else ""
            caption = f"{n}. <code>{html.escape(turn['action'])}</code> {html.escape(element)}"
            if turn.get("error"):
                caption += f' <span class="failure">{html.escape(turn["error"][:200])}</span>'
        figures.append(
            f'<figure><div class="shot"><img alt="turn {n}" '
            f'src="data:image/{kind};base64,{data}">{outline}</div>'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    gif = ""
    if frames.get("gif"):  # a link beside report.html, so the GIF can be saved and shared
        href = (root / frames["gif"]).relative_to(run_dir)
        gif = f' · <a href="{html.escape(str(href))}">GIF</a>'

    return (
        f'<details class="frames"><summary>{len(figures)} frames{gif}</summary>'
        f'<template><div class="strip">{"".join(figures)}</div></template></details>'
    )


def _datasets_section(run_dir: Path) -> str:
    """Every trajectory dataset under the run (demonstrations, saved training or evaluation
    episodes): who played each record, its goal, actions and the env's errors."""
    folders = sorted({shard.parent for shard in run_dir.rglob(SHARD_PATTERN)})
    if not folders:
        return ""
    parts = ["<h2>Trajectory datasets</h2>"]
    for folder in folders:
        records = list(islice(read_trajectories([folder]), MAX_DATASET_RECORDS))
        rows = "".join(
            f'<tr data-task="{html.escape(t.task)}" data-outcome="{t.outcome}" data-changed="0">'
            f"<td>{html.escape(t.task)}</td><td>{t.seed}</td><td>{html.escape(t.goal)}</td>"
            f"<td>{html.escape(t.source)}: {html.escape(t.policy)}</td>"
            f"<td>{_outcome(t.outcome)}</td><td>{_turns(t.turns)}</td></tr>"
            for t in records
        )
        parts.append(
            f"<h3>{html.escape(str(folder.relative_to(run_dir)))} "
            f'<span class="muted">(the first {len(records)} records)</span></h3>'
            "<table><tr><th>task</th><th>seed</th><th>goal</th><th>played by</th>"
            f"<th>outcome</th><th>actions</th></tr>{rows}</table>"
        )
    return "".join(parts)


def _turns(turns: Sequence[TurnRecord]) -> str:
    """Each action, and the env's error after it when there was one."""
    return " → ".join(
        f"<code>{html.escape(t.action)}</code>"
        + (f' <span class="failure">{html.escape(t.error[:120])}</span>' if t.error else "")
        for t in turns
    )
