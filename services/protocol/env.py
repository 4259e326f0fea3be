"""Wire types of the env service: what the trainer (or any OpenEnv client) sends and receives.

The models subclass openenv-core's ``Action``/``Observation``/``State`` so the env server plugs into
OpenEnv's ``/ws`` protocol unchanged. Field names are a superset of the upstream OpenEnv BrowserGym
env (``action_str``; ``text``, ``goal``, ``axtree_txt``, ``pruned_html``, ``url``, ``error``,
``last_action_error``, ``screenshot``) so clients written against upstream run against our pods.
Differences from upstream, on purpose: ``error`` carries the real error message (upstream loses it)
and ``screenshot`` is base64-encoded PNG/JPEG bytes, never nested integer lists.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from openenv.core.env_server.types import Action, Observation, State
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.protocol.generated import GeneratedTask

ENV_PROTOCOL_VERSION = "1.3"  # 1.2: the demonstrate message; 1.3: reset carries generated tasks
#: Largest task seed: MiniWoB and BrowserGym seed numpy's generator, which takes 32 bits.
MAX_SEED = 2**32 - 1


class BrowserAction(Action):
    """One BrowserGym high-level action, e.g. ``click('13')`` or ``fill('21', 'LAF')``."""

    action_str: str = Field(
        ...,
        max_length=4096,
        description=(
            "A BrowserGym high-level action call from the pod's action subset (see /metadata). "
            "A malformed or disallowed action is not executed: the observation's `error` says why "
            "and the episode goes on."
        ),
    )


class BrowserResetOptions(BaseModel):
    """Keyword arguments of ``reset`` (the ``data`` of a WebSocket ``reset`` message)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(
        default=None,
        max_length=255,
        description=(
            "Task as '<family>.<task>', e.g. 'pages.greet'; MiniWoB tasks also bare, "
            "'click-test' (or 'miniwob.click-test', 'browsergym/miniwob.click-test'). None: the "
            "pod's default task."
        ),
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Task seed in [0, 2**32 - 1] (tasks seed numpy with it); None draws one. "
        "Same task+seed = same page.",
    )
    episode_id: str | None = Field(
        default=None, max_length=255, description="Caller's episode id, echoed in the state."
    )
    screenshot: bool = Field(
        default=False, description="Attach a base64 screenshot to every observation."
    )
    pruned_html: bool = Field(
        default=False, description="Attach BrowserGym's pruned HTML to every observation."
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Step cap for this episode (`truncated` when hit); None: the pod's default.",
    )
    generated: GeneratedTask | None = Field(
        default=None,
        description="A generated task to play (a curriculum's new goal on a MiniWoB page): the "
        "request carries the task itself, so any pod serving the `generated` family plays it, "
        "with no state shared with the trainer. `task` is then its name (gen.<id>) or omitted.",
    )

    @model_validator(mode="after")
    def _generated_name(self) -> BrowserResetOptions:
        if self.generated is not None and self.task not in (None, self.generated.name):
            raise ValueError(
                f"task {self.task!r} is not the generated task sent ({self.generated.name!r})"
            )
        return self


class BrowserObservation(Observation):
    """What the policy sees after a reset or a step (``done`` and ``reward`` come from the base)."""

    text: str = Field(default="", description="Goal plus accessibility tree, ready for a prompt.")
    goal: str = Field(default="", description="The task's natural-language goal.")
    axtree_txt: str = Field(
        default="", description="Flattened accessibility tree; `[bid]` marks actionable elements."
    )
    pruned_html: str = Field(default="", description="Pruned HTML (only when requested).")
    url: str = Field(default="", description="URL of the active page.")
    screenshot: str | None = Field(
        default=None, description="Base64 PNG/JPEG of the viewport (only when requested)."
    )
    screenshot_format: Literal["png", "jpeg"] | None = Field(
        default=None, description="Encoding of `screenshot`."
    )
    element_boxes: dict[str, list[float]] | None = Field(
        default=None,
        description="[x, y, width, height] in CSS pixels, in the screenshot's coordinates, of "
        "each visible element with a bid (only with `screenshot`): where an action lands.",
    )
    last_action: str = Field(default="", description="The action this observation follows.")
    error: str = Field(
        default="", description="Real error message of the last action ('' when it succeeded)."
    )
    last_action_error: bool = Field(
        default=False, description="True when the last action failed (upstream-compatible flag)."
    )
    task: str = Field(default="", description="Canonical task name, e.g. 'click-test'.")
    seed: int | None = Field(default=None, description="Seed of this episode.")
    step: int = Field(default=0, ge=0, description="Steps taken in this episode.")
    truncated: bool = Field(
        default=False, description="The step cap was hit before the task ended."
    )


def succeeded(reward: float | None) -> bool:
    """Whether a finished episode solved its task: the task's reward is positive. The one rule
    for the env's metrics, the trainer's outcomes and every evaluation."""
    return (reward or 0.0) > 0


class BrowserState(State):
    """Episode state returned by a WebSocket ``state`` message."""

    task: str = Field(default="", description="Canonical task name of the current episode.")
    seed: int | None = Field(default=None, description="Seed of the current episode.")
    done: bool = Field(default=False, description="Whether the current episode has ended.")
    cumulative_reward: float = Field(default=0.0, description="Sum of rewards so far.")


class BrowserDemonstration(BaseModel):
    """Reply to a ``{"type": "demonstrate"}`` message: what the task family's scripted solver would
    do next on the session's page (it does not act). Demonstrations for behaviour cloning."""

    model_config = ConfigDict(extra="forbid")

    action: str | None = Field(
        default=None,
        description="The next action, e.g. fill('16', 'juan'); None when the family has no "
        "solver for the task or the page.",
    )
    task: str = Field(default="", description="Canonical task name of the running episode.")


class EnvErrorCode(StrEnum):
    """Codes in ``{"type": "error", "data": {"message", "code"}}`` WebSocket replies.

    The first seven are openenv-core's own; the rest are this service's. Meaning for a client:
    CAPACITY_REACHED and DRAINING: this pod takes no new work, go to another one. TIMEOUT and
    BROWSER_ERROR: the episode was lost to an infrastructure failure (hung page, crashed
    browser); the session stays usable after a reset. The others are caller bugs.
    """

    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    EXECUTION_ERROR = "EXECUTION_ERROR"
    CAPACITY_REACHED = "CAPACITY_REACHED"
    FACTORY_ERROR = "FACTORY_ERROR"
    SESSION_ERROR = "SESSION_ERROR"
    UNKNOWN_TASK = "UNKNOWN_TASK"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    NOT_RESET = "NOT_RESET"
    DRAINING = "DRAINING"
    TIMEOUT = "TIMEOUT"
    BROWSER_ERROR = "BROWSER_ERROR"
    TASK_ERROR = "TASK_ERROR"
