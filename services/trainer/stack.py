"""The rollout stack, built in one place from the trainer config: training and evaluation both
play their episodes through it.

It is the env pool (fed live by the configured discovery), the generation batcher over a
backend, the prompt builder and the rollout engine, on a private event loop in a daemon thread
(sessions, the batcher and the discovery watch outlive one call). What differs between training
and evaluation is only a ``RolloutProtocol``: sampling, turn caps and context budgets.
Evaluation fixes what its protocol fixes (greedy unless asked, ``eval.max_turns`` turns,
held-out seeds) and takes everything else (timeouts, retries, batching, prompts) from the same
config as training.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from services.protocol.generated import GeneratedTask
from services.protocol.trajectory import Source, Trajectory
from services.trainer.config import TrainerConfig
from services.trainer.discovery import Discovery
from services.trainer.env_pool import EnvPool
from services.trainer.generation.base import GenerationBackend, SamplingParams, wait_until_ready
from services.trainer.prompts import PromptBuilder
from services.trainer.rollout import (
    Demonstrator,
    Episode,
    EpisodeRequest,
    GenerationBatcher,
    Replies,
    RolloutEngine,
    RolloutObserver,
)
from services.trainer.trajectories import to_record

log = logging.getLogger(__name__)


class EventLoopThread:
    """A private asyncio loop in a daemon thread: sessions and the batcher outlive one call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="rollout-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass(frozen=True)
class RolloutProtocol:
    """What training and evaluation rollouts may differ in."""

    sampling: SamplingParams
    max_turns: Callable[[str], int]
    max_context_tokens: int
    max_completion_tokens: int

    @classmethod
    def training(cls, cfg: TrainerConfig, prompts: PromptBuilder) -> RolloutProtocol:
        gen = cfg.generation
        return cls(
            sampling=SamplingParams(
                max_new_tokens=gen.max_new_tokens,
                temperature=gen.temperature,
                top_p=gen.top_p,
                stop=prompts.stop,
            ),
            max_turns=cfg.tasks.turns_for,
            max_context_tokens=cfg.prompt.max_prompt_tokens,
            max_completion_tokens=cfg.grpo.max_completion_length,
        )

    @classmethod
    def evaluation(cls, cfg: TrainerConfig, prompts: PromptBuilder) -> RolloutProtocol:
        """Training's protocol with what ``eval`` fixes: its turn cap, its temperature (0 =
        greedy), a seeded sampler, and the whole-episode budget that its turns need."""
        ev = cfg.eval
        training = cls.training(cfg, prompts)
        return cls(
            sampling=replace(training.sampling, temperature=ev.temperature, seed=cfg.run.seed),
            max_turns=lambda _task: ev.max_turns,
            max_context_tokens=ev.max_context_tokens,
            max_completion_tokens=ev.max_context_tokens,
        )


ProtocolFactory = Callable[[TrainerConfig, PromptBuilder], RolloutProtocol]


class RolloutStack:
    """Env pool + discovery + batcher + prompts + engine for one policy (see module docstring)."""

    def __init__(
        self,
        cfg: TrainerConfig,
        tokenizer: Any,
        backend: GenerationBackend | None,
        discovery: Discovery,
        *,
        protocol: ProtocolFactory = RolloutProtocol.training,
        observer: RolloutObserver | None = None,
        policy_name: str | None = None,
        demonstrate: bool = False,
    ) -> None:
        """``backend`` generates the policy's replies; with ``demonstrate`` the env pods' scripted
        solvers answer instead (``backend`` may then be None)."""
        self.cfg = cfg
        self.backend = backend
        self.discovery = discovery
        self.prompts = PromptBuilder.from_config(tokenizer, cfg)
        self.policy_name = policy_name or cfg.model.source
        self.protocol = protocol(cfg, self.prompts)
        self.demonstrate = demonstrate
        self.loop = EventLoopThread()
        self._watch: Future | None = None
        try:
            self.engine: RolloutEngine = self.loop.run(self._build(observer))
        except BaseException:
            self.loop.close()
            raise
        self._engines: dict[ProtocolFactory, RolloutEngine] = {protocol: self.engine}

    async def _build(self, observer: RolloutObserver | None) -> RolloutEngine:
        pool = EnvPool.from_config(self.cfg.env)
        pool.set_endpoints(await self.discovery.current())
        log.info("env endpoints: %s", ", ".join(pool.endpoints) or "none yet")
        self._watch = asyncio.ensure_future(self.discovery.watch(pool.set_endpoints))
        return self._new_engine(pool, await self._replies(), self.protocol, observer)

    def _new_engine(
        self,
        pool: EnvPool,
        replies: Replies,
        protocol: RolloutProtocol,
        observer: RolloutObserver | None = None,
    ) -> RolloutEngine:
        return RolloutEngine(
            pool,
            replies,
            self.prompts,
            sampling=protocol.sampling,
            max_turns=protocol.max_turns,
            max_context_tokens=protocol.max_context_tokens,
            max_completion_tokens=protocol.max_completion_tokens,
            max_infra_retries=self.cfg.env.max_infra_retries,
            observer=observer,
        )

    async def _replies(self) -> Replies:
        """The env pods' solvers (demonstrations) or the policy behind the backend, batched."""
        if self.demonstrate:
            return Demonstrator(self.prompts)
        if self.backend is None:
            raise ValueError("a rollout stack without demonstrations needs a generation backend")
        await wait_until_ready(self.backend)
        gen = self.cfg.generation
        remote = gen.backend.type == "remote"
        return GenerationBatcher(
            self.backend,
            max_batch_size=gen.max_batch_size,
            wait_s=gen.batch_wait_ms / 1000,
            concurrency=gen.backend.max_concurrency if remote else 1,
        )

    @property
    def pool(self) -> EnvPool:
        return self.engine.pool

    def _engine_for(self, protocol: ProtocolFactory | None) -> RolloutEngine:
        """The stack's engine, or one under another protocol over the same pool, replies and
        generated tasks (its episodes are not observed: they are not training's)."""
        if protocol is None:
            return self.engine
        if protocol not in self._engines:
            rules = protocol(self.cfg, self.prompts)
            engine = self._new_engine(self.engine.pool, self.engine.replies, rules)
            engine.generated = self.engine.generated
            self._engines[protocol] = engine
        return self._engines[protocol]

    def records(
        self, episodes: Sequence[Episode], source: Source, policy_version: int | None = None
    ) -> list[Trajectory]:
        """Trajectory records of the played episodes (dropped ones have none)."""
        return [
            to_record(
                e,
                source=source,
                policy=self.policy_name,
                tokenizer=self.prompts.tokenizer.name_or_path,
                prompt_format=self.prompts.format,
                max_turns=self.protocol.max_turns(e.task),
                policy_version=policy_version,
            )
            for e in episodes
            if not e.dropped
        ]

    def complete(self, texts: Sequence[str], sampling: SamplingParams) -> list[str]:
        """Plain text completions from the stack's policy backend (a model writing goals)."""
        if self.backend is None:
            raise ValueError("this rollout stack has no generation backend to complete text")
        prompts = [self.prompts.encode(text) for text in texts]
        return [g.text for g in self.loop.run(self.backend.generate(prompts, sampling))]

    def serve(self, tasks: Sequence[GeneratedTask]) -> None:
        """Generated tasks this stack may play: each of their resets carries the task."""
        self.engine.generated.update((task.name, task) for task in tasks)

    def play(
        self,
        requests: Sequence[EpisodeRequest],
        on_episode: Callable[[Episode], None] | None = None,
        protocol: ProtocolFactory | None = None,
    ) -> list[Episode]:
        """Play every request at once (results in request order; dropped ones marked); under
        ``protocol`` instead of the stack's own (training's stack measuring its policy)."""
        return self.start(requests, on_episode, protocol).result()

    def start(
        self,
        requests: Sequence[EpisodeRequest],
        on_episode: Callable[[Episode], None] | None = None,
        protocol: ProtocolFactory | None = None,
    ) -> Future[list[Episode]]:
        """``play`` without waiting: the episodes play on the stack's loop meanwhile."""
        engine = self._engine_for(protocol)
        return self.loop.submit(self._play(engine, list(requests), on_episode))

    async def _play(self, engine: RolloutEngine, requests, on_episode) -> list[Episode]:
        async def one(request: EpisodeRequest) -> Episode:
            episode = await engine.play(request)
            if on_episode is not None:
                on_episode(episode)
            return episode

        return list(await asyncio.gather(*(one(r) for r in requests)))

    def close(self) -> None:
        """Stop the discovery watch, close idle sessions and the backend, end the loop."""
        try:
            if self._watch is not None:
                self.loop.loop.call_soon_threadsafe(self._watch.cancel)
            self.loop.run(self.engine.pool.aclose(), timeout=10)
            if self.backend is not None:
                self.loop.run(self.backend.close(), timeout=10)
        finally:
            self.loop.close()
