"""Generated tasks as a task family (``gen.<id>``): a curriculum's new goals on MiniWoB pages.

The trainer's task generation (``services/trainer/task_generation.py``) keeps the pool; every
reset of a generated task carries the task itself (``BrowserResetOptions.generated``), so any pod
plays it, however many pods there are and whenever they joined, and the family keeps no list of
its own. Each task sets its MiniWoB page up as that task does at that seed (the same page, so the
same element ids the goal was written from), shows the generated goal instead of the page's own,
and replaces the page's checker with the generated one (``services/protocol/generated.py``). A
click is recorded when it happens (a click often leaves the page as it was).
"""

from __future__ import annotations

import playwright.sync_api

from services.env.families.base import TaskCheck, TaskError, TaskFamily
from services.env.families.miniwob import TASK_CLASSES, MiniWoBFamily, MiniWoBTask
from services.protocol import axtree as tree
from services.protocol.generated import GENERATED, GeneratedTask
from services.protocol.tasks import UnknownTaskError

_RECORD_CLICKS = """(bid) => {
  window.__browserRL = {clicks: []};
  document.addEventListener("click", (event) => {
    if (!(event.target instanceof Element) || !event.target.closest("[bid]")) return;
    const target = document.querySelector(`[bid="${bid}"]`);
    window.__browserRL.clicks.push(target !== null && target.contains(event.target));
  }, true);
}"""
_CHECK = """([kind, bids, value]) => {
  const element = (bid) => document.querySelector(`[bid="${bid}"]`);
  const clicks = (window.__browserRL || {clicks: []}).clicks;
  if (kind === "click" && clicks.length) return {done: true, reward: clicks[0] ? 1 : 0};
  const missing = bids.filter((bid) => element(bid) === null);
  if (missing.length) return {missing};
  if (kind === "fill") return {done: element(bids[0]).value === value, reward: 1};
  if (kind === "check") {
    const wanted = new Set(bids.map(element));
    const boxes = [...document.querySelectorAll("input[type=checkbox]")];
    return {done: boxes.every((box) => box.checked === wanted.has(box)), reward: 1};
  }
  return {done: false, reward: 0};
}"""


class GeneratedTaskInstance:
    """One episode of a generated task (see the module docstring)."""

    def __init__(self, spec: GeneratedTask, page_task: MiniWoBTask) -> None:
        self.spec = spec
        self._page_task = page_task

    def setup(self, page: playwright.sync_api.Page) -> str:
        self._page_task.setup(page)
        if self.spec.check is not None and self.spec.check.kind == "click":
            self._evaluate(page, _RECORD_CLICKS, self.spec.check.bids[0])
        return self.spec.goal

    def check(self, page: playwright.sync_api.Page) -> TaskCheck:
        check = self.spec.check
        if check is None:  # no checker: the episode runs to its turn cap, the ORM judges it
            return TaskCheck(reward=0.0, done=False)
        answer = self._evaluate(page, _CHECK, [check.kind, check.bids, check.value])
        if answer.get("missing"):
            raise TaskError(
                f"task {self.spec.name}: element(s) {answer['missing']} of its goal are not on "
                f"the page ({self.spec.base_task} seed {self.spec.seed}); the task is dropped"
            )
        if not answer["done"]:
            return TaskCheck(reward=0.0, done=False)
        return TaskCheck(reward=float(answer["reward"]), done=True)

    def teardown(self) -> None:
        self._page_task.teardown()

    def demonstrate(self, goal: str, axtree: str) -> str | None:
        """The goal's own solution: the next of its actions the page does not show done."""
        check = self.spec.check
        if check is None:
            return None
        if check.kind != "check":
            return check.solution()[0]
        ticked = {e.bid for e in tree.elements(axtree) if e.checked}
        wanted = set(check.bids)
        boxes = [e.bid for e in tree.elements(axtree) if e.role == "checkbox"]
        todo = [bid for bid in boxes if (bid in wanted) != (bid in ticked)]
        return f"click({todo[0]!r})" if todo else None

    def _evaluate(self, page: playwright.sync_api.Page, script: str, arg):
        try:
            return page.evaluate(script, arg)
        except playwright.sync_api.Error as exc:
            if page.is_closed():
                raise  # the browser went away: an infrastructure failure
            raise TaskError(f"task {self.spec.name}: its check failed: {exc}") from exc


class GeneratedFamily(TaskFamily):
    """The tasks resets carry (``instance_of``); it lists none of its own."""

    name = GENERATED

    def __init__(self, miniwob: MiniWoBFamily | None = None) -> None:
        self.miniwob = miniwob or MiniWoBFamily()

    @classmethod
    def from_config(cls, config) -> GeneratedFamily:
        """From ``GeneratedFamilyConfig`` (services/env/config.py)."""
        return cls(MiniWoBFamily(config.base_url))

    def tasks(self) -> tuple[str, ...]:
        return ()

    def description(self, task: str) -> str:
        raise UnknownTaskError(f"generated task {task!r}: a reset carries it, no pod lists it")

    def instance(self, task: str, seed: int) -> GeneratedTaskInstance:
        raise UnknownTaskError(
            f"generated task {task!r} was not sent with the reset (options.generated)"
        )

    def instance_of(self, spec: GeneratedTask) -> GeneratedTaskInstance:
        """An episode of the generated task ``spec`` (on its own page: its seed)."""
        if spec.base_task not in TASK_CLASSES:
            raise TaskError(f"task {spec.name}: its page {spec.base_task!r} is no MiniWoB task")
        return GeneratedTaskInstance(spec, self.miniwob.instance(spec.base_task, spec.seed))
