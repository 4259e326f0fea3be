"""The rollout engine: many multi-turn browser episodes at once, generation batched across them.

Each episode is a coroutine: reset(task, seed) → [prompt → generate → parse action → step] × up
to ``max_turns`` → reward. All episodes of a call run concurrently over the env pool; whenever
several of them wait for the policy, their turns are generated as one batch. Token ids are kept
exactly as sampled: the episode record holds the first prompt, then the model's tokens
interleaved with the env's reply tokens, an ``env_mask`` (1 = model token) and the generator's
logprob of every model token.

Infrastructure failures (pod died, pod full, generation server error) never end as reward 0:
the episode is replayed from its reset on another pod, up to ``max_infra_retries`` times, and
then dropped; every retry and drop is counted. A generation failure is replayed after a back-off
(a restarting server needs seconds, not three instant retries). A broken task (its page or
checker failed: TASK_ERROR) is dropped at once: a replay would fail the same way. A request the
generation server refuses as such (HTTP 4xx: a prompt longer than its context) stops the rollout
with the server's reason instead of being replayed forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from services.protocol.actions import extract_action
from services.protocol.env import BrowserResetOptions, succeeded
from services.protocol.generated import GeneratedTask
from services.trainer.env_pool import (
    EnvInfraError,
    EnvPool,
    EnvSession,
    NoEndpointsError,
    TaskFailedError,
)
from services.trainer.frames import Frame, frame_of
from services.trainer.generation.base import (
    Generation,
    GenerationBackend,
    GenerationError,
    GenerationRequestError,
    SamplingParams,
)
from services.trainer.prompts import PromptBuilder

log = logging.getLogger(__name__)

Outcome = Literal["success", "failure", "truncated", "dropped"]

#: What is sent to the env when the model's reply holds no action at all (empty or whitespace):
#: an empty action string is not a call, so the env would reject the request itself instead of
#: reporting a policy error. Replies with text but no valid action are sent verbatim, so the
#: policy reads the env's real error message on the next turn.
EMPTY_REPLY_ACTION = "noop()"
#: Capacity answers ("pod full, go elsewhere") retried per episode at most, beside the replays.
MAX_CAPACITY_RETRIES = 200
#: Back-off before replaying an episode whose generation failed: 1, 2, 4 ... s, at most 30 s.
GENERATION_RETRY_BACKOFF_S = 1.0


@dataclass(frozen=True)
class EpisodeRequest:
    """One episode to play: a task page (task + seed); equal requests form a GRPO group."""

    task: str
    seed: int
    frames: bool = field(default=False, compare=False)
    """Keep a screenshot of every turn's page and the element acted on (``frames.py``)."""


@dataclass
class Turn:
    """One turn as the policy lived it: what it saw, what it did, where its tokens are.

    The policy was conditioned on ``prompt_ids + completion_ids[:start]`` and produced
    ``completion_ids[start:end]`` (all of them ``env_mask`` 1).
    """

    observation: str
    """The page (accessibility tree) the turn's prompt was built from, before it was cut."""
    action: str
    """The action sent to the env (the reply itself when it held no valid action)."""
    start: int
    end: int
    error: str = ""
    """The env's error for that action ('' when it ran)."""
    reward: float = 0.0
    frame: Frame | None = None
    """The page the action was taken on, when the request asked for frames."""


@dataclass
class Episode:
    """One finished (or dropped) episode, ready for TRL's ``rollout_func``."""

    task: str
    seed: int
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reward: float = 0.0
    outcome: Outcome = "failure"
    turns: int = 0
    actions: list[str] = field(default_factory=list)
    invalid_actions: int = 0
    infra_retries: int = 0
    generated_tokens: int = 0
    policy_versions: list[int] = field(default_factory=list)
    """Per turn: the policy version that generated it (as the server reported)."""
    token_versions: list[int] = field(default_factory=list)
    """Per completion token: the version that sampled it (-1 for env tokens)."""
    endpoint: str | None = None
    drop_reason: str | None = None
    goal: str = ""
    turn_log: list[Turn] = field(default_factory=list)
    final_frame: Frame | None = None
    """The page the last action left, when the request asked for frames."""
    final_observation: str = ""
    """The accessibility tree the last action left (what an outcome reward model judges)."""

    @property
    def success(self) -> bool:
        return self.outcome == "success"

    @property
    def dropped(self) -> bool:
        return self.outcome == "dropped"

    def facts(self) -> dict[str, Any]:
        """What the episode did and how it ended, JSON-ready (evaluation reports, episode log)."""
        return {
            "task": self.task,
            "seed": self.seed,
            "goal": self.goal,
            "reward": self.reward,
            "outcome": self.outcome,
            "turns": self.turns,
            "actions": list(self.actions),
            "invalid_actions": self.invalid_actions,
            "infra_retries": self.infra_retries,
        }


class RolloutObserver:
    """Hooks for metrics; the default does nothing."""

    def infra_retry(self, reason: str) -> None: ...

    def episode_done(self, episode: Episode) -> None: ...

    def action(self, valid: bool) -> None: ...


class GenerationBatcher:
    """Collects the turns waiting for the policy and generates them together.

    A batch starts when ``max_batch_size`` turns wait, when every episode in play is waiting
    (nobody else can join: the engine reports episodes in play through ``episode_started`` /
    ``episode_ended``), ``wait_s`` after the first one arrived, or, when all ``concurrency``
    slots were busy, as soon as a slot frees up (everything that queued meanwhile goes in one
    batch). ``concurrency`` is 1 for an in-process model.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        *,
        max_batch_size: int = 16,
        wait_s: float = 0.02,
        concurrency: int = 1,
    ) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.concurrency = concurrency
        self._pending: dict[SamplingParams, list[tuple[list[int], Hashable, asyncio.Future]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._busy = 0
        self._in_play = 0
        self._running: set[asyncio.Task] = set()
        self.batch_sizes: list[int] = []

    def episode_started(self) -> None:
        self._in_play += 1

    def episode_ended(self) -> None:
        self._in_play -= 1
        if self._pending and self._waiting() >= self._in_play:
            self._launch()

    def _waiting(self) -> int:
        return sum(len(q) for q in self._pending.values())

    async def reply(
        self, context: list[int], params: SamplingParams, session: EnvSession
    ) -> Generation:
        """The policy's reply to an episode's context (the session names the episode, so a
        backend with several servers keeps its turns on one)."""
        return await self.generate(context, params, episode=session.episode_id)

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, episode: Hashable = None
    ) -> Generation:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()
        queue = self._pending.setdefault(params, [])
        queue.append((prompt_ids, episode, future))
        if len(queue) >= self.max_batch_size or self._waiting() >= self._in_play:
            self._launch()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_s, self._launch)
        return await future

    def _launch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._busy < self.concurrency and self._pending:
            params, queue = next(iter(self._pending.items()))
            batch, rest = queue[: self.max_batch_size], queue[self.max_batch_size :]
            if rest:
                self._pending[params] = rest
            else:
                del self._pending[params]
            self._busy += 1
            task = asyncio.ensure_future(self._run(batch, params))
            self._running.add(task)  # keep a reference until it finishes
            task.add_done_callback(self._running.discard)

    async def _run(
        self, batch: list[tuple[list[int], Hashable, asyncio.Future]], params: SamplingParams
    ):
        self.batch_sizes.append(len(batch))
        try:
            results = await self.backend.generate(
                [ids for ids, _, _ in batch], params, episodes=[key for _, key, _ in batch]
            )
            if len(results) != len(batch):
                raise GenerationError(
                    f"backend returned {len(results)} generations for {len(batch)} prompts"
                )
        except Exception as exc:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, _, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
        finally:
            self._busy -= 1
            self._launch()  # what queued while this batch ran goes now, together


class Demonstrator:
    """Replies with the task family's scripted action instead of the policy's (demonstrations).

    The env pod's solver reads the real page and names the next action; it is written into the
    episode as the policy would have written it (the prompt format's reply tokens), so the token
    sequence is the one the policy will be trained on. None from the pod ends the episode.
    """

    def __init__(self, prompts: PromptBuilder) -> None:
        self.prompts = prompts

    def episode_started(self) -> None: ...

    def episode_ended(self) -> None: ...

    async def reply(
        self, context: list[int], params: SamplingParams, session: EnvSession
    ) -> Generation | None:
        action = await session.demonstrate()
        if action is None:
            return None
        ids = self.prompts.reply_ids(action)
        return Generation(ids, [0.0] * len(ids), action, policy_version=0, finish_reason="stop")


class Replies(Protocol):
    """Who answers each turn: the policy (``GenerationBatcher``) or a ``Demonstrator``."""

    def episode_started(self) -> None: ...

    def episode_ended(self) -> None: ...

    async def reply(
        self, context: list[int], params: SamplingParams, session: EnvSession
    ) -> Generation | None:
        """The next reply to an episode's token context (None: no reply, the episode ends)."""


class RolloutEngine:
    """Plays episodes concurrently over an ``EnvPool``; ``replies`` answers each turn."""

    def __init__(
        self,
        pool: EnvPool,
        replies: Replies,
        prompts: PromptBuilder,
        *,
        sampling: SamplingParams,
        max_turns: Callable[[str], int] | int = 5,
        max_context_tokens: int = 4096,
        max_completion_tokens: int = 2048,
        max_infra_retries: int = 3,
        observer: RolloutObserver | None = None,
        generation_backoff_s: float = GENERATION_RETRY_BACKOFF_S,
    ) -> None:
        self.pool = pool
        self.replies = replies
        self.prompts = prompts
        self.sampling = sampling
        self._max_turns = max_turns
        self.max_context_tokens = max_context_tokens
        self.max_completion_tokens = max_completion_tokens
        self.max_infra_retries = max_infra_retries
        self.observer = observer or RolloutObserver()
        self.generation_backoff_s = generation_backoff_s
        self.generated: dict[str, GeneratedTask] = {}
        """Generated tasks by name (``serve``): their resets carry them to whichever pod."""
        eos = prompts.tokenizer.eos_token_id
        self._eos_id: int | None = eos if isinstance(eos, int) else None

    def max_turns(self, task: str) -> int:
        return self._max_turns(task) if callable(self._max_turns) else self._max_turns

    async def run(self, requests: Sequence[EpisodeRequest]) -> list[Episode]:
        """Play all requests at once; results in request order (dropped ones marked)."""
        return list(await asyncio.gather(*(self.play(r) for r in requests)))

    async def play(self, request: EpisodeRequest) -> Episode:
        """One episode, replayed elsewhere after infrastructure failures, or dropped."""
        avoid: set[str] = set()
        replays = capacity_retries = 0
        while True:
            try:
                episode = await self._play_once(request, avoid)
            except NoEndpointsError as exc:
                self.observer.infra_retry(exc.reason)
                return self._dropped(request, replays + capacity_retries, str(exc))
            except TaskFailedError as exc:
                return self._dropped(request, replays + capacity_retries, f"task_error: {exc}")
            except EnvInfraError as exc:
                self.observer.infra_retry(exc.reason)
                if exc.endpoint:
                    avoid.add(exc.endpoint)
                if exc.reason == "capacity" and capacity_retries < MAX_CAPACITY_RETRIES:
                    capacity_retries += 1
                    continue
                replays += 1
                if replays > self.max_infra_retries:
                    return self._dropped(request, replays + capacity_retries, str(exc))
                log.info("replaying %s seed %s after: %s", request.task, request.seed, exc)
                continue
            except GenerationRequestError:
                raise  # the server refused the request itself: a replay cannot succeed
            except GenerationError as exc:
                self.observer.infra_retry("generation")
                replays += 1
                if replays > self.max_infra_retries:
                    return self._dropped(request, replays + capacity_retries, str(exc))
                await asyncio.sleep(min(self.generation_backoff_s * 2 ** (replays - 1), 30.0))
                continue
            episode.infra_retries = replays + capacity_retries
            self.observer.episode_done(episode)
            return episode

    def _dropped(self, request: EpisodeRequest, retries: int, reason: str) -> Episode:
        log.warning("dropping episode %s seed %s: %s", request.task, request.seed, reason)
        episode = Episode(
            task=request.task,
            seed=request.seed,
            outcome="dropped",
            infra_retries=retries,
            drop_reason=reason,
        )
        self.observer.episode_done(episode)
        return episode

    async def _play_once(self, request: EpisodeRequest, avoid: set[str]) -> Episode:
        max_turns = self.max_turns(request.task)
        # The env ends the episode at the same cap (counted as truncated, not abandoned).
        options = BrowserResetOptions(
            task=request.task,
            seed=request.seed,
            max_steps=max_turns,
            screenshot=request.frames,
            generated=self.generated.get(request.task),
        )
        async with self.pool.session(options, avoid=avoid) as session:
            self.replies.episode_started()
            try:
                return await self._turns(request, session, max_turns)
            finally:
                self.replies.episode_ended()

    async def _turns(self, request: EpisodeRequest, session, max_turns: int) -> Episode:
        """The turns of one episode on an open session."""
        obs = session.observation
        ep = Episode(task=request.task, seed=request.seed, endpoint=session.endpoint, goal=obs.goal)
        ep.prompt_ids = self.prompts.first_prompt(obs, max_turns)
        for turn in range(1, max_turns + 1):
            context = ep.prompt_ids + ep.completion_ids
            gen = await self.replies.reply(context, self.sampling, session)
            if gen is None:  # the demonstrator has no action for this page: a failed episode
                break
            start = len(ep.completion_ids)
            self._append(ep, gen.token_ids, gen.logprobs, version=gen.policy_version)
            ep.generated_tokens += len(gen.token_ids)
            ep.policy_versions.append(gen.policy_version)
            action = self._action_of(ep, gen.text)
            before = obs
            obs = await session.step(action)
            ep.turns = turn
            ep.turn_log.append(
                Turn(
                    before.axtree_txt,
                    action,
                    start,
                    len(ep.completion_ids),
                    obs.error,
                    float(obs.reward or 0),
                    frame_of(before, action),
                )
            )
            ep.final_frame = frame_of(obs)
            ep.final_observation = obs.axtree_txt
            if obs.done and not obs.truncated:
                ep.reward = float(obs.reward or 0.0)
                ep.outcome = "success" if succeeded(ep.reward) else "failure"
                break
            if turn == max_turns:
                ep.outcome = "truncated"
                break
            env_ids = self.prompts.next_turn(
                obs,
                turn=turn + 1,
                max_turns=max_turns,
                action=action,
                completion_ids=gen.token_ids,
                completion_finished=gen.finish_reason == "stop",
            )
            if not self._fits(ep, env_ids):
                # The context budget is spent: the policy took too long.
                ep.outcome = "truncated"
                break
            self._append(ep, env_ids, [0.0] * len(env_ids))
        if self._eos_id is not None and ep.completion_ids and ep.completion_ids[-1] != self._eos_id:
            # Close the sequence for TRL's bookkeeping (masked: the model did not write it).
            self._append(ep, [self._eos_id], [0.0])
        return ep

    def _action_of(self, ep: Episode, reply: str) -> str:
        parsed = extract_action(reply, self.prompts.allowed)
        self.observer.action(parsed is not None)
        if parsed is not None:
            action = str(parsed)
        else:
            ep.invalid_actions += 1
            action = reply.strip()[:4096] or EMPTY_REPLY_ACTION
        ep.actions.append(action)
        return action

    def _fits(self, ep: Episode, env_ids: list[int]) -> bool:
        grown = len(ep.completion_ids) + len(env_ids) + self.sampling.max_new_tokens
        return (
            grown <= self.max_completion_tokens
            and len(ep.prompt_ids) + grown <= self.max_context_tokens
        )

    @staticmethod
    def _append(
        ep: Episode, ids: list[int], logprobs: list[float], *, version: int | None = None
    ) -> None:
        """Completion tokens: the model's when ``version`` (the policy that sampled them) is
        given, the env's otherwise."""
        ep.completion_ids.extend(ids)
        ep.logprobs.extend(logprobs)
        ep.env_mask.extend([0 if version is None else 1] * len(ids))
        ep.token_versions.extend([-1 if version is None else version] * len(ids))
