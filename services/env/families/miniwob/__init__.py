"""MiniWoB++ as a task family: BrowserGym's 125 task classes, pages from the ``miniwob`` wheel.

Each task's own ``setup`` (navigate to the ``file://`` page, seed, start) and ``validate`` (the
page's JavaScript reward) are used as they are. ``solvers.py`` holds scripted solvers for the
tasks the demonstrations cover: each reads the goal and the page like a policy would and names
the next action (``demonstrate``); ``oracle.py`` plays whole episodes for tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import miniwob
import playwright.sync_api
from browsergym.miniwob import ALL_MINIWOB_TASKS
from browsergym.miniwob.base import AbstractMiniwobTask

from services.env.families.base import TaskCheck, TaskFamily
from services.env.families.miniwob.solvers import SOLVERS
from services.protocol.tasks import MINIWOB

TASK_CLASSES: dict[str, type[AbstractMiniwobTask]] = {
    cls.subdomain: cls for cls in ALL_MINIWOB_TASKS
}


def miniwob_file_url() -> str:
    """``file://`` URL of the task pages shipped in the ``miniwob`` wheel (trailing slash)."""
    return (Path(miniwob.__file__).parent / "html" / "miniwob").as_uri() + "/"


class MiniWoBTask:
    """One MiniWoB episode: BrowserGym's task object behind the ``TaskInstance`` interface."""

    def __init__(self, task: AbstractMiniwobTask) -> None:
        self._task = task
        self._solver = SOLVERS.get(task.subdomain)

    def setup(self, page: playwright.sync_api.Page) -> str:
        goal, _ = self._task.setup(page)
        return goal

    def check(self, page: playwright.sync_api.Page) -> TaskCheck:
        reward, done, message, _ = self._task.validate(page, [])
        return TaskCheck(reward=float(reward), done=bool(done), message=message or "")

    def teardown(self) -> None:
        self._task.teardown()

    def demonstrate(self, goal: str, axtree: str) -> str | None:
        return self._solver(goal, axtree) if self._solver is not None else None


class MiniWoBFamily(TaskFamily):
    """MiniWoB++ (``base_url``: where the pages are served; default the wheel's files)."""

    name = MINIWOB

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url or miniwob_file_url()

    @classmethod
    def from_config(cls, config) -> MiniWoBFamily:
        """From ``MiniWoBFamilyConfig`` (services/env/config.py)."""
        return cls(config.base_url)

    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted(TASK_CLASSES))

    def instance(self, task: str, seed: int) -> MiniWoBTask:
        return MiniWoBTask(TASK_CLASSES[task](seed=seed, base_url=self.base_url))
