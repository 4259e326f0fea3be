"""The task-family seam: what the env pod needs from a benchmark (or from a user's own pages).

A family names its tasks and, for a (task, seed), makes a ``TaskInstance`` that sets a page up
and checks it. The pod does everything else the same way for every family: browser contexts,
bid marking and the accessibility tree, the action grammar, limits, timeouts, metrics and the
wire protocol. Add a family = one module implementing ``TaskFamily`` + one line in
``services/env/families/__init__.py`` (``FAMILIES``) + a config entry in
``EnvServerConfig.task_families``.

Every method runs on the session's browser thread (Playwright's sync API).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol

import playwright.sync_api


class TaskError(RuntimeError):
    """A task could not be set up or checked (a broken page or checker, not the policy's fault).

    The pod answers ``TASK_ERROR`` naming the task and what failed, ends the episode and keeps
    serving; the trainer drops the episode and counts it, never scoring it as a failure.
    """


@dataclass(frozen=True)
class TaskCheck:
    """The task's verdict on the page after a step."""

    reward: float
    done: bool
    message: str = ""


class TaskInstance(Protocol):
    """One episode's task: a goal on a page, and the check that says whether it was reached."""

    def setup(self, page: playwright.sync_api.Page) -> str:
        """Load and prepare the page for this seed; return the goal in words."""
        ...

    def check(self, page: playwright.sync_api.Page) -> TaskCheck:
        """Reward and whether the episode is over, read off the page after an action."""
        ...

    def teardown(self) -> None:
        """Free what ``setup`` took (the page itself is reused by the next episode)."""
        ...

    def demonstrate(self, goal: str, axtree: str) -> str | None:
        """The next action of a scripted solver on the page as the policy sees it (its goal and
        accessibility tree), or None when there is none. Demonstrations for behaviour cloning."""
        ...


class TaskFamily(abc.ABC):
    """A set of tasks served by one pod, e.g. MiniWoB++ or a folder of the user's pages."""

    #: The family's prefix in task names (``<name>.<task>``); MiniWoB's tasks may omit it.
    name: str

    @abc.abstractmethod
    def tasks(self) -> tuple[str, ...]:
        """The family's task names (without the family prefix), sorted."""

    @abc.abstractmethod
    def instance(self, task: str, seed: int) -> TaskInstance:
        """A fresh task instance for one episode (``task`` is one of ``tasks()``)."""

    def description(self, task: str) -> str:
        """One line about the task, for ``/metadata``."""
        return ""
