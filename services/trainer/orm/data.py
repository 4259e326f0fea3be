"""Labelled examples for an outcome reward model, split so the test measures generalisation.

The label is the task's own checker (the trajectory's outcome). A page (task, seed) falls wholly
on one side: every policy's trajectory of it is in training or in testing, never both, and the
``held_out_tasks`` are test-only. Identical trajectories (same page, same actions: greedy
policies often agree) count once.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from services.protocol.tasks import canonical_task
from services.protocol.trajectory import Trajectory
from services.trainer.orm.prompt import JudgeInput, from_record

Split = Literal["train", "test_seeds", "test_tasks"]


@dataclass(frozen=True)
class Example:
    task: str
    seed: int
    source: str
    """Who played it (``policy`` of the record, e.g. the model folder or 'scripted solvers')."""
    judge_input: JudgeInput
    label: bool
    """The checker's verdict: True when the task was done."""


def split_of(task: str, seed: int, held_out_tasks: frozenset[str], test_share: float) -> Split:
    if task in held_out_tasks:
        return "test_tasks"
    digest = hashlib.sha256(f"{task}:{seed}".encode()).digest()
    return "test_seeds" if int.from_bytes(digest[:4], "big") / 2**32 < test_share else "train"


def examples(
    records: Iterable[Trajectory], held_out_tasks: Sequence[str], test_share: float
) -> dict[Split, list[Example]]:
    """The labelled examples of each split (duplicates dropped; records without a final page
    dropped too: the judge could not see how the episode ended)."""
    held_out = frozenset(canonical_task(t) for t in held_out_tasks)
    out: dict[Split, list[Example]] = {"train": [], "test_seeds": [], "test_tasks": []}
    seen: set[tuple] = set()
    for record in records:
        task = canonical_task(record.task)
        key = (task, record.seed, tuple(t.action for t in record.turns), record.outcome)
        if key in seen or not record.final_observation:
            continue
        seen.add(key)
        example = Example(task, record.seed, record.policy, from_record(record), record.success)
        out[split_of(task, record.seed, held_out, test_share)].append(example)
    return out


def balanced(items: Sequence[Example]) -> list[Example]:
    """The examples with the rarer label's repeated (in order) until both labels are as many."""
    by_label = {True: [e for e in items if e.label], False: [e for e in items if not e.label]}
    rare, common = sorted(by_label.values(), key=len)
    if not rare:
        return list(items)
    repeated = [rare[i % len(rare)] for i in range(len(common))]
    return common + repeated


def describe(items: Sequence[Example]) -> str:
    """'N examples (Y yes) over T tasks' for logs and reports."""
    tasks = Counter(e.task for e in items)
    return f"{len(items)} examples ({sum(e.label for e in items)} yes) over {len(tasks)} tasks"
