"""WebRL's self-evolving curriculum: at each phase boundary, the pages the policy failed seed new
goals "in breadth", and a probe keeps those at the edge of its ability.

- **Generation.** The ``programmatic`` generator writes goals from a failed page's own elements
  (as the policy saw them on its first turn): click the button/link/tab/option (or clickable
  text) labelled L, type V into the field labelled F, tick the boxes X and Y. Each comes with a
  check over the page (the ``gen`` family, ``services/env/families/generated.py``), so its reward
  stays exact. A label that two elements of the same role share is skipped (the goal would be
  ambiguous).
- The ``lm`` generator asks a language model (the policy's generation backend: the local model
  or the inference service) for a new goal on the failed page, WebRL's "in breadth" prompt
  shortened for a small model. Its goals have no check: the episode runs to its turn cap and the
  outcome reward model judges it, both in the probe (``judge``) and as the training reward (an
  ``orm`` reward source listing ``gen.lm-*``).
- **Band filter (the critic).** Each candidate is played ``probe_episodes`` times by the current
  policy at the training temperature; it is kept when its success rate lies in ``band`` (WebRL:
  0.05 to 0.75): neither solved already nor hopeless. A probe measures exactly what the band
  asks, on this policy, where a learned critic would predict it (WebRL's critic reads the initial
  page; none is trained here). With 4 probes the kept rates are 0.25, 0.5 and 0.75. A candidate
  whose page cannot be set up or checked is dropped and counted, never scored as a failure.
- **Pool.** Kept tasks go to ``<run>/task_pool/pool.jsonl`` and join the curriculum beside the
  original tasks; every reset of one carries the task to whichever env pod plays it (the
  ``generated`` family, ``gen.<id>``), so pods share nothing with the trainer. ``state.json``
  beside it has the counts per phase (generated, kept, dropped and why; success of original
  and generated tasks; ``last_phase``: the phase that was running when training ended), so a
  resumed run continues with its pool and history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.protocol import axtree as tree
from services.protocol.generated import (
    GENERATED,
    LM_TASK_PREFIX,
    GeneratedTask,
    GoalCheck,
    read_pool,
    write_pool,
)
from services.protocol.tasks import task_family
from services.trainer.rollout import Episode, EpisodeRequest

log = logging.getLogger(__name__)

POOL_FILE = "pool.jsonl"
STATE_FILE = "state.json"
#: Roles a click goal may name, and how the goal calls them.
CLICK_ROLES = {
    "button": "button",
    "link": "link",
    "tab": "tab",
    "radio": "option",
    "menuitem": "menu item",
    "treeitem": "item",
}
TYPED_ROLES = frozenset({"textbox", "searchbox"})
FILL_WORDS = ("apple", "river", "Lisbon", "orange", "Maria", "42", "blue", "tiger")
MAX_LABEL = 40


@dataclass(frozen=True)
class FailedPage:
    """A page the policy failed: its task, seed, goal and first observation."""

    task: str
    seed: int
    goal: str
    page: str


def programmatic_goals(
    failed: FailedPage, *, per_page: int, rng: random.Random, phase: int = 0
) -> list[GeneratedTask]:
    """Up to ``per_page`` new goals over ``failed``'s elements (see the module docstring)."""
    found = [e for e in tree.elements(failed.page) if 0 < len(e.label) <= MAX_LABEL]
    labels = Counter((e.role, e.label) for e in found)
    unique = [e for e in found if labels[(e.role, e.label)] == 1]
    candidates: list[tuple[str, GoalCheck]] = []
    for e in unique:
        if e.role in CLICK_ROLES:
            goal = f'Click the {CLICK_ROLES[e.role]} "{e.label}".'
            candidates.append((goal, GoalCheck(kind="click", bids=[e.bid])))
        elif e.role == "generic" and e.flag("clickable"):  # MiniWoB's links, widgets
            candidates.append((f'Click on "{e.label}".', GoalCheck(kind="click", bids=[e.bid])))
        elif e.role in TYPED_ROLES:
            word = rng.choice(FILL_WORDS)
            candidates.append(
                (
                    f'Type "{word}" into the field "{e.label}".',
                    GoalCheck(kind="fill", bids=[e.bid], value=word),
                )
            )
    boxes = [e for e in unique if e.role == "checkbox"]
    if len(boxes) >= 2:
        picked = sorted(rng.sample(boxes, k=min(len(boxes) - 1, 2)), key=lambda e: e.bid)
        names = " and ".join(f'"{e.label}"' for e in picked)
        check = GoalCheck(kind="check", bids=[e.bid for e in picked])
        candidates.append((f"Select {names} and nothing else, then stop.", check))
    chosen = rng.sample(candidates, k=min(per_page, len(candidates)))
    return [_task(failed, goal, check, phase) for goal, check in chosen]


def _task(failed: FailedPage, goal: str, check: GoalCheck | None, phase: int) -> GeneratedTask:
    """A generated task on ``failed``'s page; its id is the same whenever the goal is (a
    language model's goals, which have no check, are ``lm-...``)."""
    what = check.model_dump(mode="json") if check is not None else goal
    key = json.dumps([failed.task, failed.seed, what], sort_keys=True)
    prefix = "" if check is not None else LM_TASK_PREFIX
    return GeneratedTask(
        id=f"{prefix}{failed.task}-{failed.seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}",
        base_task=failed.task,
        seed=failed.seed,
        goal=goal,
        check=check,
        generator="programmatic" if check is not None else "lm",
        parent_goal=failed.goal,
        phase=phase,
    )


GOAL_PROMPT = (
    "You write tasks for a web agent. Below is a web page and a task on it that the agent "
    "failed. Write one new task for the same page, different from the failed one, about "
    "elements you can see and doable with clicks and typing. Answer with the task only.\n\n"
    "Page:\n{page}\n\nFailed task: {goal}\nNew task:"
)
PAGE_CHARS = 1500


def goal_prompt(failed: FailedPage) -> str:
    """What the ``lm`` generator is asked (the page compacted as the policy sees it, cut)."""
    from services.trainer.prompts import compact

    page = compact(failed.page)
    if len(page) > PAGE_CHARS:
        page = page[:PAGE_CHARS] + "\n..."
    return GOAL_PROMPT.format(page=page, goal=failed.goal)


def lm_goal(failed: FailedPage, reply: str, phase: int = 0) -> GeneratedTask | None:
    """The task a model's reply writes (its first line), or None when it wrote no usable goal:
    too short, or the failed goal again (also restated with other quotes, case or spacing)."""
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    goal = lines[0].strip("\"' ") if lines else ""
    if len(goal) < 8 or _gist(goal) == _gist(failed.goal):
        return None
    return _task(failed, goal, None, phase)


def _gist(goal: str) -> str:
    """A goal without quotes, case, spacing or closing punctuation: ``Click on "OK".`` and
    ``click on 'ok'`` ask the same."""
    unquoted = re.sub(r"[\"'“”‘’`]", "", goal.lower())
    return " ".join(unquoted.split()).rstrip(".!")


def _example(task: GeneratedTask) -> dict[str, Any]:
    """A kept task as the phase history shows it: goal, check, page, the goal it came from."""
    return {
        "goal": task.goal,
        "check": task.check.model_dump(mode="json") if task.check else None,
        "page": f"{task.base_task} seed {task.seed}",
        "parent_goal": task.parent_goal,
    }


FATES = ("kept", "too_easy", "too_hard", "broken")
"""What the probe makes of a candidate (``band_verdict``)."""


def band_verdict(successes: int, played: int, band: tuple[float, float]) -> str:
    """'kept', 'too_easy', 'too_hard' or 'broken' (no episode could be played)."""
    if played == 0:
        return "broken"
    rate = successes / played
    low, high = band
    return "kept" if low <= rate <= high else ("too_easy" if rate > high else "too_hard")


class TaskGeneration:
    """The pool, its generation at phase boundaries and its history (module docstring).

    ``play`` plays requests with the current policy (the rollout stack) and ``serve`` lets it
    play generated tasks (their resets carry them to the pods); ``add_tasks`` hands kept tasks
    to the curriculum; ``write`` completes prompts with a language model (the ``lm``
    generator); ``judge`` says which episodes of goals without a check succeeded (the ORM)."""

    def __init__(
        self,
        config,
        folder: Path,
        play: Callable[[list[EpisodeRequest]], list[Episode]],
        serve: Callable[[Sequence[GeneratedTask]], None],
        add_tasks: Callable[[Sequence[str]], None],
        *,
        write: Callable[[list[str]], list[str]] | None = None,
        judge: Callable[[list[Episode]], list[bool]] | None = None,
        seed: int = 0,
        metrics=None,
    ) -> None:
        self.config = config
        self.folder = Path(folder)
        self.play = play
        self.serve = serve
        self.add_tasks = add_tasks
        self.write = write
        self.judge = judge
        self.metrics = metrics
        self._rng = random.Random(seed)
        self.pool: list[GeneratedTask] = read_pool(self.folder / POOL_FILE)
        self.history: list[dict[str, Any]] = self._read_history()
        self.phase = len(self.history)
        self._failed: dict[tuple[str, int], FailedPage] = {}
        self._outcomes: Counter[tuple[str, bool]] = Counter()
        if self.pool:
            self.serve(self.pool)
            self.add_tasks([t.name for t in self.pool])
            log.info("task pool: %d generated tasks resumed from %s", len(self.pool), self.folder)

    @property
    def pool_file(self) -> Path:
        return self.folder / POOL_FILE

    def observe(self, episodes: Sequence[Episode]) -> None:
        """A step's episodes: failed original pages seed the next generation; success counts
        per kind of task go into the phase's history."""
        for episode in episodes:
            if episode.dropped:
                continue
            generated = task_family(episode.task) == GENERATED
            self._outcomes[("generated" if generated else "original", episode.success)] += 1
            if not generated and not episode.success and episode.turn_log:
                key = (episode.task, episode.seed)
                page = episode.turn_log[0].observation
                self._failed[key] = FailedPage(episode.task, episode.seed, episode.goal, page)

    def phase_started(self, _model=None) -> None:
        """At a phase boundary (``PhaseReference``): close the last phase's record, generate
        from its failures, probe, keep what is in the band."""
        if not self._failed and not self._outcomes:
            return  # the first phase: nothing played yet
        self.phase += 1
        record = {"phase": self.phase, **self._success_record()}
        candidates = self._candidates()
        fates = self._probe(candidates) if candidates else {}
        kept = [t for t in candidates if fates.get(t.id) == "kept"]
        self.pool.extend(kept)
        write_pool(self.pool_file, self.pool)
        if kept:
            self.add_tasks([t.name for t in kept])
        counts = Counter(fates.values())
        by_generator = Counter((t.generator, fates[t.id]) for t in candidates)
        dropped = [t for t in candidates if fates[t.id] != "kept"]
        written = Counter(t.generator for t in candidates)
        record.update(
            failed_pages=len(self._failed),
            generated=len(candidates),
            **{fate: counts[fate] for fate in FATES},
            by_generator={
                g: {fate: by_generator[(g, fate)] for fate in FATES}
                for g in sorted({g for g, _ in by_generator})
            },
            pool=len(self.pool),
            examples=[_example(t) for t in kept[:3]],
            dropped=[{**_example(t), "fate": fates[t.id]} for t in dropped[:3]],
        )
        self.history.append(record)
        self._write_history()
        if self.metrics is not None:
            self.metrics.tasks_generated(by_generator, len(self.pool))
        log.info(
            "task generation after phase %d: %d failed pages -> %d goals (%s); kept %d, too easy "
            "%d, too hard %d, broken %d; pool %d",
            self.phase, len(self._failed), len(candidates),
            ", ".join(f"{g} {n}" for g, n in sorted(written.items())) or "none",
            counts["kept"], counts["too_easy"], counts["too_hard"], counts["broken"],
            len(self.pool),
        )  # fmt: skip
        self._failed.clear()
        self._outcomes.clear()

    def _success_record(self) -> dict[str, Any]:
        out = {}
        for kind in ("original", "generated"):
            played = self._outcomes[(kind, True)] + self._outcomes[(kind, False)]
            out[f"{kind}_episodes"] = played
            out[f"{kind}_success"] = self._outcomes[(kind, True)] / played if played else None
        return out

    def _candidates(self) -> list[GeneratedTask]:
        """Up to ``max_candidates`` new goals, shared evenly by the configured generators."""
        known = {t.id for t in self.pool}
        pages = list(self._failed.values())
        self._rng.shuffle(pages)
        generators = self.config.generators
        share = -(-self.config.max_candidates // len(generators))
        out: list[GeneratedTask] = []
        for generator in generators:
            if generator == "lm":
                goals = self._lm_goals(pages[:share])
            else:
                goals = self._programmatic(pages)
            fresh = list({t.id: t for t in goals if t.id not in known}.values())[:share]
            known.update(t.id for t in fresh)
            out.extend(fresh)
        return out[: self.config.max_candidates]

    def _programmatic(self, pages: Sequence[FailedPage]) -> list[GeneratedTask]:
        per_page = self.config.goals_per_page
        return [
            task
            for page in pages
            for task in programmatic_goals(page, per_page=per_page, rng=self._rng, phase=self.phase)
        ]

    def _lm_goals(self, pages: Sequence[FailedPage]) -> list[GeneratedTask]:
        if self.write is None or not pages:
            return []
        replies = self.write([goal_prompt(page) for page in pages])
        written = [
            lm_goal(page, reply, self.phase) for page, reply in zip(pages, replies, strict=True)
        ]
        return [task for task in written if task is not None]

    def _probe(self, candidates: Sequence[GeneratedTask]) -> dict[str, str]:
        """Each candidate's fate: play it ``probe_episodes`` times with the current policy."""
        self.serve(candidates)
        k = self.config.probe_episodes
        requests = [EpisodeRequest(t.name, t.seed) for t in candidates for _ in range(k)]
        episodes = self.play(requests)
        fates = {}
        for i, task in enumerate(candidates):
            played = [e for e in episodes[i * k : (i + 1) * k] if not e.dropped]
            if task.check is None:  # no checker: the judge decides (the config requires one)
                assert self.judge is not None, "a goal without a check needs task_generation.judge"
                successes = sum(self.judge(played)) if played else 0
            else:
                successes = sum(e.success for e in played)
            fates[task.id] = band_verdict(successes, len(played), tuple(self.config.band))
        return fates

    def finish(self) -> None:
        """Training ended: the running phase's success, as ``last_phase`` (not a boundary: a
        resumed run goes on counting phases from the history)."""
        if self._outcomes:
            self._write_history({"phase": self.phase + 1, **self._success_record()})

    def _read_history(self) -> list[dict[str, Any]]:
        path = self.folder / STATE_FILE
        return json.loads(path.read_text())["phases"] if path.is_file() else []

    def _write_history(self, last_phase: dict[str, Any] | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{STATE_FILE}.tmp"
        state = {"phases": self.history, "last_phase": last_phase}
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(self.folder / STATE_FILE)
