"""Task names, defined once: how a task is written, which family serves it, which tasks exist.

A task is addressed as ``<family>.<task>``. MiniWoB, the first family, is the default: its tasks
are also addressed by the bare name (``click-test``, the canonical form, as in every metric label
and report) and by BrowserGym's id (``browsergym/miniwob.click-test``). Any other family keeps its
prefix (``pages.greet``).

Which tasks exist is published here, so the trainer checks a config before anything starts
without importing a benchmark's package: MiniWoB's list is ``miniwob_tasks.txt`` (written from the
installed ``miniwob`` package by ``make proto``; a test fails when they differ), a page-folder
family's list is its folder's sub-folders (see ``page_task_names``).
"""

from __future__ import annotations

import importlib.resources
from functools import cache
from pathlib import Path

MINIWOB = "miniwob"
#: A page task is a sub-folder of a page-folder family's folder holding this manifest.
PAGE_TASK_MANIFEST = "task.yaml"


class UnknownTaskError(ValueError):
    """A task name no family knows (or that a pod does not serve); the message lists the valid."""


def canonical_task(name: str) -> str:
    """'browsergym/miniwob.click-test', 'miniwob.click-test' and 'click-test' → 'click-test';
    'pages.greet' stays 'pages.greet'."""
    name = name.strip().removeprefix("browsergym/")
    family, dot, task = name.partition(".")
    return task if dot and family == MINIWOB else name


def task_family(name: str) -> str:
    """The family serving a task: the prefix before the first dot, MiniWoB for bare names."""
    family, dot, _ = canonical_task(name).partition(".")
    return family if dot else MINIWOB


def family_task(name: str) -> str:
    """The task's name inside its family ('pages.greet' → 'greet', 'click-test' → 'click-test')."""
    canonical = canonical_task(name)
    return canonical.partition(".")[2] if task_family(canonical) != MINIWOB else canonical


def qualified_name(family: str, task: str) -> str:
    """The canonical name of ``task`` in ``family`` (bare for MiniWoB)."""
    return task if family == MINIWOB else f"{family}.{task}"


@cache
def miniwob_tasks() -> frozenset[str]:
    """The MiniWoB tasks the env pods serve (the published list; no benchmark import)."""
    text = importlib.resources.files(__package__).joinpath("miniwob_tasks.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def page_task_names(folder: str | Path) -> tuple[str, ...]:
    """Tasks of a page-folder family: the sub-folders of ``folder`` that hold ``task.yaml``."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UnknownTaskError(f"page task folder {root} does not exist")
    return tuple(sorted(p.name for p in root.iterdir() if (p / PAGE_TASK_MANIFEST).is_file()))


def check_tasks(names: list[str], known: dict[str, frozenset[str] | tuple[str, ...]]) -> None:
    """Raise ``UnknownTaskError`` for names whose family is known but which it does not have.

    ``known`` maps a family to its task names; names of families not in ``known`` are left to
    the pods (they answer UNKNOWN_TASK), so a config naming a remote family still loads.
    """
    unknown = [
        n for n in names if task_family(n) in known and family_task(n) not in known[task_family(n)]
    ]
    if unknown:
        families = sorted({task_family(n) for n in unknown})
        raise UnknownTaskError(
            f"unknown task(s) {sorted({canonical_task(n) for n in unknown})} in family "
            f"{', '.join(families)}"
        )
