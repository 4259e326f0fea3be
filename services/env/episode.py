"""One session's episodes on a reused page, built from BrowserGym's own parts.

Instead of ``BrowserEnv.reset()`` (which relaunches Chromium and a second "chat" browser every
episode) a session keeps one browser context and page, and each reset re-runs the task's own
setup on that page (a ``TaskInstance`` of the task's family: MiniWoB's ``setup``, or a page of
your own). The task's check gives the reward; bid marking, accessibility-tree extraction, HTML
pruning and action execution are BrowserGym's functions; only the orchestration is ours.

Every method here runs on the owning ``BrowserWorker``'s thread.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import time
from dataclasses import dataclass, field

import playwright.sync_api
from browsergym.core.action.base import execute_python_code
from browsergym.core.action.highlevel import HighLevelActionSet
from browsergym.core.observation import (
    MarkingError,
    _post_extract,
    _pre_extract,
    extract_dom_extra_properties,
    extract_dom_snapshot,
    extract_merged_axtree,
)
from browsergym.utils.obs import flatten_axtree_to_str, flatten_dom_to_str, prune_html

from services.env.browser import BrowserWorker
from services.env.config import EnvServerConfig
from services.env.families import TaskCatalog
from services.env.families.base import TaskError, TaskInstance
from services.protocol.actions import ActionParseError, allowed_actions, parse_action
from services.protocol.env import (
    BrowserDemonstration,
    BrowserObservation,
    BrowserResetOptions,
    BrowserState,
)

_EXTRACT_TRIES = 3
_TRANSIENT_EXTRACT_ERRORS = (
    "Frame was detached",
    "Frame with the given frameId is not found",
    "Execution context was destroyed",
    "Frame has been detached",
    "Cannot mark a child frame without a bid",
    "Cannot read properties of undefined",
)


#: BrowserGym's action functions hard-code ``timeout=500`` (ms) on every Playwright call, over the
#: context's default: on a busy machine a valid click on a present element then fails, and the
#: same task, seed and actions give different outcomes. The pod rewrites them to its own
#: ``action_timeout_ms`` (``test_action_code_uses_the_pods_timeout`` fails if upstream changes).
_HARD_CODED_TIMEOUT = re.compile(r"\btimeout=500\b")


def action_set_for(config: EnvServerConfig) -> HighLevelActionSet:
    """BrowserGym's action set for the pod's subsets, with the pod's action timeout."""
    action_set = HighLevelActionSet(
        subsets=list(config.action_subsets), strict=False, multiaction=False
    )
    if not config.keep_browsergym_action_timeouts:
        action_set.python_includes = _HARD_CODED_TIMEOUT.sub(
            f"timeout={config.action_timeout_ms}", action_set.python_includes
        )
    return action_set


class NotResetError(RuntimeError):
    """A step or state call before the first reset, or a step after the episode ended."""


class BrowserCrashedError(RuntimeError):
    """The session's browser died under it; the episode is lost (an infrastructure failure)."""


@dataclass
class EpisodeOptions:
    """Per-episode settings resolved from the reset request and the pod config."""

    screenshot: bool = False
    pruned_html: bool = False
    max_steps: int = 10


@dataclass
class PageEpisode:
    """A session's browser context, its page and the episode running on it."""

    worker: BrowserWorker
    config: EnvServerConfig
    catalog: TaskCatalog
    action_set: HighLevelActionSet
    context: playwright.sync_api.BrowserContext | None = None
    page: playwright.sync_api.Page | None = None
    generation: int = -1
    task: TaskInstance | None = None
    task_name: str = ""
    seed: int | None = None
    episode_id: str | None = None
    goal: str = ""
    last_axtree: str = ""
    steps: int = 0
    done: bool = True
    running: bool = False  # an episode was reset and has not ended
    cumulative_reward: float = 0.0
    options: EpisodeOptions = field(default_factory=EpisodeOptions)
    #: Seconds spent per phase in the last reset/step (for benchmarks and logs).
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, worker: BrowserWorker, config: EnvServerConfig, catalog: TaskCatalog):
        return cls(worker=worker, config=config, catalog=catalog, action_set=action_set_for(config))

    @property
    def allowed(self) -> tuple[str, ...]:
        return allowed_actions(self.config.action_subsets)

    # ---- lifecycle --------------------------------------------------------------------------
    def reset(self, request: BrowserResetOptions) -> BrowserObservation:
        task_name = self.catalog.reset_task(
            request.task or self.config.default_task, request.generated
        )
        self._end_episode()
        self._teardown_task()
        started = time.perf_counter()
        if self.worker.due_for_recycle() and self.worker.active_episodes == 0:
            self._close_context()
            self.worker.recycle()
        if self.page is None or not self.worker.is_current(self.generation):
            self._close_context()
            self.context, self.generation = self.worker.new_context()
            self.page = self.context.new_page()
        elif len(self.context.pages) > 1:  # popups of the last episode
            for extra in self.context.pages:
                if extra != self.page:
                    extra.close()
        browser_ready = time.perf_counter()
        self.seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        self.task = self.catalog.instance(task_name, self.seed, request.generated)
        self.task_name = task_name
        try:
            self.goal = self.task.setup(self.page)
        except (playwright.sync_api.Error, TaskError) as exc:
            self._raise_if_crashed(exc)
            self.task = None
            raise
        setup_done = time.perf_counter()
        self.episode_id = request.episode_id
        self.options = EpisodeOptions(
            screenshot=request.screenshot,
            pruned_html=request.pruned_html,
            max_steps=request.max_steps or self.config.max_steps,
        )
        self.steps = 0
        self.cumulative_reward = 0.0
        self.done = False
        self.running = True
        self.worker.active_episodes += 1
        self.worker.episodes_since_launch += 1
        observation = self._observe(last_action="", error="", reward=0.0)
        self.timings = {
            "browser": browser_ready - started,
            "task_setup": setup_done - browser_ready,
            "observe": time.perf_counter() - setup_done,
        }
        return observation

    def step(self, action_str: str) -> BrowserObservation:
        if self.task is None or self.done:
            raise NotResetError(
                "no episode is running: send a reset first"
                if self.task is None
                else "the episode has ended: send a reset to start a new one"
            )
        started = time.perf_counter()
        self.steps += 1
        error = self._execute(action_str)
        if self.config.pre_observation_delay_s:
            time.sleep(self.config.pre_observation_delay_s)
        acted = time.perf_counter()
        try:
            self.page.wait_for_load_state("domcontentloaded", timeout=3000)
            check = self.task.check(self.page)
        except (playwright.sync_api.Error, TaskError) as exc:
            self._raise_if_crashed(exc)
            self._end_episode()
            self.done = True
            raise
        validated = time.perf_counter()
        reward, done = check.reward, check.done
        self.cumulative_reward += reward
        truncated = not done and self.steps >= self.options.max_steps
        observation = self._observe(
            last_action=action_str, error=error, reward=reward, done=done, truncated=truncated
        )
        if done or truncated:
            self._end_episode()
            self.done = True
        self.timings = {
            "action": acted - started,
            "validate": validated - acted,
            "observe": time.perf_counter() - validated,
        }
        return observation

    def demonstrate(self) -> BrowserDemonstration:
        """The task's scripted next action for the page as last observed (does not act)."""
        if self.task is None or self.done:
            raise NotResetError("no episode is running: send a reset first")
        action = self.task.demonstrate(self.goal, self.last_axtree)
        return BrowserDemonstration(action=action, task=self.task_name)

    def state(self, session_id: str) -> BrowserState:
        return BrowserState(
            episode_id=self.episode_id or session_id,
            step_count=self.steps,
            task=self.task_name,
            seed=self.seed,
            done=self.done,
            cumulative_reward=self.cumulative_reward,
        )

    def close(self) -> None:
        self._end_episode()
        self._teardown_task()
        self._close_context()

    # ---- internals --------------------------------------------------------------------------
    def _end_episode(self) -> None:
        if self.running:
            self.running = False
            self.worker.active_episodes -= 1

    def _teardown_task(self) -> None:
        if self.task is not None:
            with contextlib.suppress(Exception):  # a failing teardown must not block the next
                self.task.teardown()

    def _close_context(self) -> None:
        if self.context is not None and self.worker.is_current(self.generation):
            # the browser may have gone away meanwhile: then there is nothing left to close
            with contextlib.suppress(playwright.sync_api.Error):
                self.context.close()
        self.context = None
        self.page = None

    def _raise_if_crashed(self, exc: Exception) -> None:
        if not self.worker.is_current(self.generation) or self.page.is_closed():
            self._end_episode()
            self.done = True
            self.task = None
            raise BrowserCrashedError(f"the browser died during the episode: {exc}") from exc

    def _execute(self, action_str: str) -> str:
        """Run the action; return its error message ('' on success). Never raises for bad input."""
        try:
            action = parse_action(action_str, self.allowed)
            code = self.action_set.to_python_code(str(action))
            execute_python_code(
                code,
                self.page,
                send_message_to_user=_refuse_chat,
                report_infeasible_instructions=_refuse_chat,
            )
        except ActionParseError as exc:
            return str(exc)
        except playwright.sync_api.Error as exc:
            self._raise_if_crashed(exc)
            return f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # BrowserGym reports action failures as exceptions
            return f"{type(exc).__name__}: {exc}"
        return ""

    def _observe(
        self,
        *,
        last_action: str,
        error: str,
        reward: float,
        done: bool = False,
        truncated: bool = False,
    ) -> BrowserObservation:
        axtree, dom = self._extract()
        extra = extract_dom_extra_properties(dom, scale_factor=1.0) if dom is not None else {}
        if self.config.clickable_generics:
            _keep_clickable_generics(axtree, extra)
        axtree_txt = flatten_axtree_to_str(axtree)
        self.last_axtree = axtree_txt
        pruned = prune_html(flatten_dom_to_str(dom)) if self.options.pruned_html else ""
        screenshot = None
        if self.options.screenshot:
            kind = self.config.screenshot_format
            quality = self.config.screenshot_quality if kind == "jpeg" else None
            image = self.page.screenshot(type=kind, quality=quality)
            screenshot = base64.b64encode(image).decode("ascii")
        return BrowserObservation(
            text=f"Goal: {self.goal}\n\n{axtree_txt}",
            goal=self.goal,
            axtree_txt=axtree_txt,
            pruned_html=pruned,
            url=self.page.url,
            screenshot=screenshot,
            screenshot_format=self.config.screenshot_format if screenshot else None,
            element_boxes=_visible_boxes(extra) if screenshot else None,
            last_action=last_action,
            error=error,
            last_action_error=bool(error),
            task=self.task_name,
            seed=self.seed,
            step=self.steps,
            truncated=truncated,
            reward=reward,
            done=done or truncated,
        )

    def _extract(self) -> tuple[dict, dict | None]:
        """BrowserGym's bid marking + merged AX tree (+ DOM snapshot when needed)."""
        need_dom = (
            self.options.pruned_html or self.options.screenshot or self.config.clickable_generics
        )
        for tries_left in reversed(range(_EXTRACT_TRIES)):
            try:
                _pre_extract(self.page, tags_to_mark="standard_html", lenient=tries_left == 0)
                axtree = extract_merged_axtree(self.page)
                dom = extract_dom_snapshot(self.page) if need_dom else None
            except (playwright.sync_api.Error, MarkingError) as exc:
                if isinstance(exc, playwright.sync_api.Error):
                    self._raise_if_crashed(exc)
                _post_extract(self.page)
                if tries_left and any(m in str(exc) for m in _TRANSIENT_EXTRACT_ERRORS):
                    time.sleep(0.1)
                    continue
                raise
            _post_extract(self.page)
            return axtree, dom
        raise AssertionError("unreachable")


def _visible_boxes(extra_properties: dict) -> dict[str, list[float]]:
    """Each visible element's box, for a screenshot's reader (which element an action hit)."""
    return {
        bid: [round(v, 1) for v in props["bbox"]]
        for bid, props in extra_properties.items()
        if props.get("bbox") and props.get("visibility", 0) > 0
    }


def _keep_clickable_generics(axtree: dict, extra_properties: dict) -> None:
    """Give clickable ``generic`` nodes (MiniWoB's onclick <span>s, e.g. click-link) an
    attribute, so that ``flatten_axtree_to_str`` prints them with their bid instead of
    dropping them as layout noise: ``[14] generic, clickable=True``."""
    for node in axtree["nodes"]:
        bid = node.get("browsergym_id")
        if (
            bid is not None
            and node.get("role", {}).get("value") == "generic"
            and extra_properties.get(bid, {}).get("clickable")
        ):
            node.setdefault("properties", []).append(
                {"name": "clickable", "value": {"type": "boolean", "value": True}}
            )


def _refuse_chat(text: str) -> None:
    raise ValueError("chat actions are not available in this environment")
