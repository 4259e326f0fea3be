"""One interface for every way the trainer turns prompt token ids into completion token ids.

Token in, token out: a backend receives token ids and returns the generated token ids with the
generator's logprob of each, so the trainer never re-tokenizes decoded text.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn."""

    max_new_tokens: int = 32
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Stop strings; the tokens that produced a stop string are kept in ``token_ids``."""
    seed: int | None = None
    """Makes sampling reproducible: the backend's k-th request samples with ``seed + k``, so the
    same call order replays the same draws while every request gets fresh random numbers (one
    fixed seed per request would replay the same draws on every turn and bias the sample)."""


@dataclass
class Generation:
    """One completion: exactly the sampled ids, their logprobs, the decoded text."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    policy_version: int = 0
    finish_reason: str = field(default="stop")
    """'stop' (EOS or a stop string) or 'length' (hit max_new_tokens)."""

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"{len(self.token_ids)} token ids but {len(self.logprobs)} logprobs in a generation"
            )


class GenerationError(RuntimeError):
    """The backend could not generate (server down, bad reply); an infrastructure failure."""


class GenerationRequestError(GenerationError):
    """The server refused the request itself (HTTP 4xx: a prompt longer than its context, an
    unknown model name): replaying it cannot succeed, so training stops with the reason."""


@runtime_checkable
class GenerationBackend(Protocol):
    """Batched generation; ``generate`` returns one ``Generation`` per prompt, in order.

    ``episodes`` names the episode of each prompt (None: unknown); a backend with several
    servers keeps an episode's turns on one (its prefix cache), the others ignore it."""

    async def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        episodes: list[Hashable] | None = None,
    ) -> list[Generation]: ...

    async def close(self) -> None: ...


async def wait_until_ready(backend: GenerationBackend) -> None:
    """Let a backend that serves from elsewhere (a server starting up) say it can generate."""
    wait = getattr(backend, "wait_ready", None)
    if wait is not None:
        await wait()
