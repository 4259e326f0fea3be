"""Configuration of one env pod, loadable from YAML and ``BROWSERENV_*`` environment variables.

Precedence (lowest first): field defaults, the YAML file, environment variables, explicit
overrides (command-line flags). Environment variables follow the rule every service shares
(``services/common/settings.py``): ``BROWSERENV_<FIELD>``, values read as YAML or JSON
(``BROWSERENV_ALLOWED_TASKS='[click-test]'``, ``BROWSERENV_MAX_SESSIONS=8``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.settings import deep_merge, environ_overrides, read_yaml
from services.protocol.actions import DEFAULT_SUBSETS, allowed_actions

ENV_PREFIX = "BROWSERENV_"

#: Chromium flags for containers and offline machines (background networking would try hosts that
#: a closed network refuses). ``--no-sandbox`` is added only
#: when running as root, where Chromium's sandbox cannot start.
DEFAULT_CHROMIUM_ARGS = (
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class MiniWoBFamilyConfig(BaseModel):
    """MiniWoB++: BrowserGym's 125 tasks, pages from the ``miniwob`` wheel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["miniwob"] = "miniwob"
    base_url: str | None = Field(
        default=None,
        description="Base URL of the MiniWoB pages (trailing slash); None: the `miniwob` package.",
    )


class PageFolderFamilyConfig(BaseModel):
    """Your own pages: a folder of HTML tasks with goals and checkers (families/pages.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["pages"] = "pages"
    name: str = Field(
        default="pages",
        pattern=r"^[a-z][a-z0-9_-]*$",
        description="Prefix of the family's task names (<name>.<task>).",
    )
    folder: str = Field(..., description="Folder whose sub-folders (with task.yaml) are tasks.")


class GeneratedFamilyConfig(BaseModel):
    """A curriculum's generated tasks on MiniWoB pages (families/generated.py), ``gen.<id>``:
    each reset of one carries the task itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["generated"] = "generated"
    base_url: str | None = Field(
        default=None,
        description="Base URL of the MiniWoB pages (trailing slash); None: the `miniwob` package.",
    )


TaskFamilyConfig = Annotated[
    MiniWoBFamilyConfig | PageFolderFamilyConfig | GeneratedFamilyConfig,
    Field(discriminator="type"),
]


class EnvServerConfig(BaseModel):
    """Everything one env pod needs; every field can come from YAML or the environment."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address to bind (0.0.0.0 in a pod).")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    max_sessions: int = Field(
        default=4, ge=1, description="WebSocket sessions served at once; more get CAPACITY_REACHED."
    )
    browsers: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Browser worker threads (one Chromium each); sessions are spread over them. "
            "None: one per session slot (max_sessions), so sessions never wait on each other."
        ),
    )
    prewarm_browsers: int = Field(
        default=1,
        ge=0,
        description="Browsers launched at start-up (readiness then proves Chromium starts).",
    )
    chromium_path: str = Field(
        default="/usr/bin/chromium", description="Chromium executable (Debian's package)."
    )
    chromium_args: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CHROMIUM_ARGS),
        description="Extra Chromium command-line flags.",
    )
    no_sandbox: bool | None = Field(
        default=None, description="Pass --no-sandbox; None: only when running as root."
    )
    task_families: list[TaskFamilyConfig] = Field(
        default_factory=lambda: [MiniWoBFamilyConfig(), GeneratedFamilyConfig()],
        min_length=1,
        description="Families of tasks the pod serves (services/env/families): MiniWoB and the "
        "generated tasks a curriculum sends by default; add {type: pages, name, folder} to "
        "serve a folder of your own pages.",
    )
    default_task: str = Field(default="click-test", description="Task of a reset without one.")
    allowed_tasks: list[str] | None = Field(
        default=None, description="Tasks a reset may ask for; None: every task of every family."
    )
    action_subsets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SUBSETS),
        description="BrowserGym action subsets the policy may use (services/protocol/actions.py).",
    )
    clickable_generics: bool = Field(
        default=True,
        description="Show clickable generic elements (onclick <span>s, e.g. click-link's links) "
        "with their bid in axtree_txt; costs a DOM snapshot per observation.",
    )
    max_steps: int = Field(
        default=10, ge=1, description="Step cap per episode; hitting it sets truncated and done."
    )
    step_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="A step (or reset) running longer is aborted: the browser is killed and "
        "restarted and the episode ends with a TIMEOUT error.",
    )
    action_timeout_ms: int = Field(
        default=5000,
        ge=100,
        description="Playwright's timeout for one action (click, fill...), also inside "
        "BrowserGym's action functions (upstream hard-codes 500 ms: valid actions failed on a "
        "busy machine).",
    )
    keep_browsergym_action_timeouts: bool = Field(
        default=False,
        description="Keep BrowserGym's hard-coded 500 ms inside its action functions instead of "
        "action_timeout_ms (upstream's behaviour; only for comparisons: make "
        "bench-action-timeouts).",
    )
    slow_mo_ms: int = Field(
        default=0, ge=0, description="Playwright slow_mo; BrowserGym's MiniWoB default is 100 ms."
    )
    pre_observation_delay_s: float = Field(
        default=0.0, ge=0, description="Pause after an action before reading the page."
    )
    idle_ttl_s: float = Field(
        default=300.0, gt=0, description="Sessions silent for longer are closed and freed."
    )
    episodes_per_browser: int = Field(
        default=500, ge=1, description="Relaunch a browser after this many episodes (leak guard)."
    )
    max_message_bytes: int = Field(
        default=65536, ge=1024, description="Larger client messages get PAYLOAD_TOO_LARGE."
    )
    screenshot_format: Literal["png", "jpeg"] = Field(
        default="jpeg", description="Encoding of opt-in screenshots."
    )
    screenshot_quality: int = Field(default=70, ge=1, le=100, description="JPEG quality.")
    drain_timeout_s: float = Field(
        default=60.0, ge=0, description="On SIGTERM, how long running episodes may still finish."
    )
    log_level: str = Field(default="info", description="uvicorn/logging level.")

    @field_validator("action_subsets")
    @classmethod
    def _known_subsets(cls, value: list[str]) -> list[str]:
        allowed_actions(value)  # raises ValueError naming the known subsets
        return value

    @property
    def worker_count(self) -> int:
        return self.browsers or self.max_sessions


def load_config(
    path: str | Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> EnvServerConfig:
    """Build the config from YAML (``path``), ``BROWSERENV_*`` variables and ``overrides``."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    environ = dict(os.environ) if environ is None else environ
    values = deep_merge(values, environ_overrides(ENV_PREFIX, environ, EnvServerConfig))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return EnvServerConfig.model_validate(values)
