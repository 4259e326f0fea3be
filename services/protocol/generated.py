"""Generated tasks: new goals on known pages, written by the trainer's curriculum and played by
the env pods as the ``gen`` family (``gen.<id>``): each reset of one carries it
(``BrowserResetOptions.generated``).

A generated task is one page (a MiniWoB task at one seed) with a goal the page's own task did
not ask for, and a check the pod runs on that page after every action:

- ``click``: done at the first click on a marked element; reward 1 when it was (inside) the
  element ``bids[0]``, else 0;
- ``fill``: done, reward 1, when the field ``bids[0]`` holds exactly ``value``;
- ``check``: done, reward 1, when the checkboxes ``bids`` are ticked and the page's others not.

The pool is a JSON-lines file (one ``GeneratedTask`` a line) in the trainer's run folder,
rewritten whole (temporary name, then rename) so a crash never leaves half of it. A task that
cannot be set up or checked (its element is not on the page) answers ``TASK_ERROR``: the
trainer drops and counts the episode, never scores it as a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GENERATED = "gen"
#: Ids of goals a language model wrote (no check: the ORM judges them), e.g. ``gen.lm-...``.
LM_TASK_PREFIX = "lm-"
CheckKind = Literal["click", "fill", "check"]
Generator = Literal["programmatic", "lm"]


class GoalCheck(BaseModel):
    """What the pod checks on the page (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CheckKind
    bids: list[str] = Field(..., min_length=1, description="The element(s) the goal names.")
    value: str | None = Field(None, description="The text a fill goal asks for.")

    @model_validator(mode="after")
    def _value(self) -> GoalCheck:
        if (self.kind == "fill") != (self.value is not None):
            raise ValueError("a fill check needs a value, and only a fill check has one")
        return self

    def solution(self) -> list[str]:
        """The actions that reach the goal (a scripted demonstration)."""
        if self.kind == "click":
            return [f"click({self.bids[0]!r})"]
        if self.kind == "fill":
            return [f"fill({self.bids[0]!r}, {self.value!r})"]
        return [f"click({bid!r})" for bid in self.bids]


class GeneratedTask(BaseModel):
    """One generated task and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9-]*$", description="Name inside the family.")
    base_task: str = Field(..., description="The MiniWoB task whose page it uses.")
    seed: int = Field(..., ge=0, description="The page's seed (the episode's seed is ignored).")
    goal: str = Field(..., min_length=1)
    check: GoalCheck | None = Field(
        None, description="None: no checker (a language model's goal, judged by the ORM)."
    )
    generator: Generator
    parent_goal: str = Field("", description="The failed goal it was written from.")
    phase: int = Field(0, ge=0, description="The phase boundary that generated it.")

    @property
    def name(self) -> str:
        return f"{GENERATED}.{self.id}"


def read_pool(path: str | Path) -> list[GeneratedTask]:
    """The pool's tasks (none when the file does not exist yet)."""
    file = Path(path)
    if not file.is_file():
        return []
    lines = file.read_text().splitlines()
    return [GeneratedTask.model_validate_json(line) for line in lines if line]


def write_pool(path: str | Path, tasks: Iterable[GeneratedTask]) -> None:
    """Replace the pool file whole, so no reader (a resumed run) finds half of it."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.tmp")
    temporary.write_text("".join(json.dumps(t.model_dump(mode="json")) + "\n" for t in tasks))
    os.replace(temporary, file)
