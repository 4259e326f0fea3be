"""Your own pages as a task family: a folder of HTML tasks, each with a goal and a checker.

    my_pages/
      greet/                 one task = one sub-folder holding task.yaml
        task.yaml            description, page (default index.html), checker: js | python
        index.html           the page, loaded from file:// (no server, no network)
        check.py             only for checker: python

The page may define ``window.browserRL.setup(seed, params)``: it builds the page for the seed
(shuffled elements, random values) and, with ``checker: js``, returns the goal in words. Then the
check after every action is either

- ``checker: js``: the page's ``window.browserRL.check()`` returns ``null`` while the task is not
  over, or the reward (a number in [0, 1]; MiniWoB-style: the page knows when it is done); or
- ``checker: python``: ``check.py`` defines ``goal(seed) -> dict`` (``{"text": <goal>,
  ...params}``; the params also go to the page's ``setup``) and
  ``check(page: PageState, params) -> float | None``, a predicate over the final DOM:
  ``page.html`` (the document's outer HTML) and ``page.values`` (the current value of every
  input/select/textarea, by id, or by name when it has no id).

A page or checker that fails (missing function, JavaScript exception, a reward that is not a
number in [0, 1]) raises ``TaskError`` naming the task and what failed: the pod answers
``TASK_ERROR`` and keeps serving. ``examples/pages/`` holds two small tasks, one of each kind.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import playwright.sync_api
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.env.families.base import TaskCheck, TaskError, TaskFamily
from services.protocol.tasks import PAGE_TASK_MANIFEST, page_task_names, qualified_name

_SETUP = """([seed, params]) => {
  const api = window.browserRL;
  if (!api || typeof api.setup !== "function") return {missing: true};
  const goal = api.setup(seed, params);
  return {goal: goal === undefined ? null : goal};
}"""
_CHECK = """() => {
  const api = window.browserRL;
  if (!api || typeof api.check !== "function") return {missing: true};
  const result = api.check();
  return {result: result === undefined ? null : result};
}"""
_VALUES = """() => Object.fromEntries(
  [...document.querySelectorAll("input, select, textarea")]
    .filter(e => e.id || e.name)
    .map(e => [e.id || e.name, e.type === "checkbox" || e.type === "radio" ? e.checked : e.value])
)"""


class PageTaskSpec(BaseModel):
    """``task.yaml`` of one page task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field("", description="One line about the task (shown in /metadata).")
    page: str = Field("index.html", description="The HTML file, relative to the task folder.")
    checker: Literal["js", "python"] = Field(
        "js", description="js: the page's browserRL.check(); python: check.py's check()."
    )


@dataclass(frozen=True)
class PageState:
    """What a Python checker sees of the final page."""

    html: str
    values: dict[str, Any]


class PageTask:
    """One episode of a page task."""

    def __init__(self, name: str, folder: Path, spec: PageTaskSpec, seed: int, module) -> None:
        self.name = name
        self.url = (folder / spec.page).as_uri()
        self.spec = spec
        self.seed = seed
        self.module: ModuleType | None = module
        self.params: dict[str, Any] = {}

    def setup(self, page: playwright.sync_api.Page) -> str:
        goal = None
        if self.module is not None:
            produced = self._call("goal()", self.module.goal, self.seed)
            if not isinstance(produced, dict) or not isinstance(produced.get("text"), str):
                raise TaskError(
                    f"task {self.name}: check.py goal() must return a dict with a 'text' string, "
                    f"got {produced!r}"
                )
            goal = produced["text"]
            self.params = {k: v for k, v in produced.items() if k != "text"}
        page.goto(self.url)
        answer = self._evaluate(page, "setup", _SETUP, [self.seed, self.params])
        if self.spec.checker == "js":
            if answer.get("missing"):
                raise TaskError(f"task {self.name}: the page defines no window.browserRL.setup()")
            goal = answer.get("goal")
            if not isinstance(goal, str) or not goal.strip():
                raise TaskError(
                    f"task {self.name}: browserRL.setup() must return the goal text, got {goal!r}"
                )
        return goal or ""

    def check(self, page: playwright.sync_api.Page) -> TaskCheck:
        if self.spec.checker == "js":
            answer = self._evaluate(page, "check", _CHECK, None)
            if answer.get("missing"):
                raise TaskError(f"task {self.name}: the page defines no window.browserRL.check()")
            result = answer.get("result")
        else:
            state = PageState(html=page.content(), values=self._evaluate(page, "check", _VALUES))
            result = self._call("check()", self.module.check, state, self.params)
        if result is None:
            return TaskCheck(reward=0.0, done=False)
        if (
            isinstance(result, bool)
            or not isinstance(result, int | float)
            or not (math.isfinite(result) and 0.0 <= result <= 1.0)
        ):
            raise TaskError(
                f"task {self.name}: the checker returned {result!r}; expected None (not done) "
                "or a reward in [0, 1]"
            )
        return TaskCheck(reward=float(result), done=True)

    def teardown(self) -> None:
        return None

    def demonstrate(self, goal: str, axtree: str) -> str | None:
        return None  # page tasks bring no solver (yet): no demonstrations

    def _evaluate(self, page: playwright.sync_api.Page, phase: str, script: str, arg=None):
        try:
            return page.evaluate(script, arg)
        except playwright.sync_api.Error as exc:
            if page.is_closed():
                raise  # the browser went away: an infrastructure failure, not the task's
            raise TaskError(f"task {self.name}: the page's {phase} failed: {exc}") from exc

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            raise TaskError(
                f"task {self.name}: check.py {what} raised {type(exc).__name__}: {exc}"
            ) from exc


class PageFolderFamily(TaskFamily):
    """The tasks in ``folder`` (see the module docstring), named ``<name>.<sub-folder>``."""

    def __init__(self, folder: str | Path, name: str = "pages") -> None:
        self.name = name
        self.folder = Path(folder).expanduser().resolve()
        #: A task whose manifest is broken stays listed: its resets answer TASK_ERROR with the
        #: reason, while the folder's other tasks keep being served.
        self._specs: dict[str, PageTaskSpec | TaskError] = {}
        for task in page_task_names(self.folder):
            try:
                self._specs[task] = self._load_spec(task)
            except TaskError as exc:
                self._specs[task] = exc
        if not self._specs:
            raise TaskError(
                f"page task folder {self.folder} holds no task (a sub-folder with "
                f"{PAGE_TASK_MANIFEST})"
            )
        self._modules: dict[str, ModuleType] = {}

    @classmethod
    def from_config(cls, config) -> PageFolderFamily:
        """From ``PageFolderFamilyConfig`` (services/env/config.py)."""
        return cls(config.folder, name=config.name)

    def tasks(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def description(self, task: str) -> str:
        spec = self._specs[task]
        return f"broken: {spec}" if isinstance(spec, TaskError) else spec.description

    def instance(self, task: str, seed: int) -> PageTask:
        spec = self._specs[task]
        if isinstance(spec, TaskError):
            raise spec
        module = self._module(task) if spec.checker == "python" else None
        return PageTask(qualified_name(self.name, task), self.folder / task, spec, seed, module)

    def _load_spec(self, task: str) -> PageTaskSpec:
        path = self.folder / task / PAGE_TASK_MANIFEST
        where = f"task {qualified_name(self.name, task)} ({path})"
        try:
            spec = PageTaskSpec.model_validate(yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as exc:
            raise TaskError(f"{where}: not valid YAML: {exc}") from exc
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'task.yaml'}: {e['msg']}" for e in exc.errors()
            )
            raise TaskError(f"{where}: {problems}") from exc
        if not (self.folder / task / spec.page).is_file():
            raise TaskError(f"{where}: page {spec.page} does not exist")
        if spec.checker == "python" and not (self.folder / task / "check.py").is_file():
            raise TaskError(f"{where}: checker python needs a check.py beside it")
        return spec

    def _module(self, task: str) -> ModuleType:
        """``check.py`` of a task, imported once; a broken one is a ``TaskError`` per episode."""
        if task not in self._modules:
            name = qualified_name(self.name, task)
            path = self.folder / task / "check.py"
            module_spec = importlib.util.spec_from_file_location(f"browser_rl_page_{task}", path)
            module = importlib.util.module_from_spec(module_spec)
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:
                raise TaskError(
                    f"task {name}: check.py failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            missing = [f for f in ("goal", "check") if not callable(getattr(module, f, None))]
            if missing:
                raise TaskError(f"task {name}: check.py defines no {' / '.join(missing)}()")
            self._modules[task] = module
        return self._modules[task]
