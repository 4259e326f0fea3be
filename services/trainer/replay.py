"""Replay of past successes (WebRL), and the likelihood term that brings them into the update.

The buffer keeps every successful training episode (and, if configured, the demonstrations the
SFT stage learned from) as trajectory records in ``<run.output_dir>/replay/``, written in shards
as they come, so a restarted run finds them again. At the start of every phase (``phases.py``) it
scores each kept episode under the policy of that moment, the phase-start policy: the geometric
mean probability of its action tokens, ``exp(mean log π(a_t | s_t))``. Only episodes inside the
band ``[min_prob, max_prob]`` (WebRL: 0.5 to 0.95, perplexity 1/0.95 to 1/0.5) are replayed in
that phase: above it the policy already knows the episode, below it the episode is too far off
the policy to be useful (WebRL, Table 2).

How replayed episodes enter the update. They are off-policy (sampled by an older policy), and
with ``use_vllm=False`` TRL computes no importance ratio for them, so they are not mixed into
the GRPO groups. Each optimizer step draws up to ``ratio × fresh samples`` of them and adds a
weighted negative log-likelihood of their action tokens (env tokens masked, as everywhere):

    L = L_GRPO + β · KL(π_θ ‖ π_phase_start) + λ · mean_{replayed action tokens} −log π_θ(a_t | s_t)

``λ`` is ``replay.coef``. It is behaviour cloning on the policy's own past successes, kept away
from what it has already mastered (the band), and held near the phase-start policy by the KL term.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.protocol.trajectory import Trajectory
from services.trainer import distributed
from services.trainer.distributed import SINGLE, World
from services.trainer.prompts import PromptBuilder
from services.trainer.sft import IGNORE, tokens_of
from services.trainer.trajectories import SHARD_PATTERN, TrajectoryWriter, read_trajectories

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """A replayable episode in the policy's tokens: ids and the positions of its action tokens."""

    record: Trajectory
    input_ids: list[int]
    targets: list[int]
    """Indices into ``input_ids`` of the policy's action tokens (what the term trains on)."""


def to_sample(record: Trajectory, prompts: PromptBuilder) -> Sample:
    input_ids, labels = tokens_of(record, prompts)
    return Sample(record, input_ids, [i for i, label in enumerate(labels) if label != IGNORE])


def action_logprobs(model, sample: Sample) -> torch.Tensor:
    """log π(a_t | s_t) of every action token of ``sample`` (one forward pass; only the action
    positions go through the LM head, which matters with a 262k-token vocabulary)."""
    device = next(model.parameters()).device
    ids = torch.tensor([sample.input_ids], device=device)
    positions = torch.tensor([t - 1 for t in sample.targets], device=device)
    logits = model(input_ids=ids, logits_to_keep=positions, use_cache=False).logits[0].float()
    targets = ids[0, positions + 1]
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]


@torch.no_grad()
def action_token_prob(model, sample: Sample) -> float:
    """Geometric mean probability of the action tokens: ``exp(mean log π)``, 1/perplexity."""
    return math.exp(action_logprobs(model, sample).mean().item())


@dataclass
class ReplayBuffer:
    """Successful episodes on disk; each phase's band-filtered pool in memory."""

    folder: Path
    prompts: PromptBuilder
    capacity: int
    band: tuple[float, float]
    samples: list[Sample] = field(default_factory=list)
    pool: list[Sample] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.writer = TrajectoryWriter(self.folder)
        if any(self.folder.glob(SHARD_PATTERN)):
            self._keep(read_trajectories([self.folder]))
            log.info("replay buffer: %d successes from %s", len(self.samples), self.folder)

    def seed_with(self, sources: Sequence[Path]) -> None:
        """Add earlier successes (e.g. the SFT demonstrations) once, on a fresh buffer."""
        if self.samples or not sources:
            return
        records = [r for r in read_trajectories(sources) if r.success]
        self.add(records)
        log.info("replay buffer seeded with %d successes from %s", len(records), sources)

    def add(self, records: Iterable[Trajectory]) -> int:
        """Keep the successes among ``records`` (on disk at once); how many were kept."""
        successes = [r for r in records if r.success]
        if successes:
            self.writer.add(successes)
            self.writer.flush()
            self._keep(successes)
        return len(successes)

    def _keep(self, records: Iterable[Trajectory]) -> None:
        self.samples.extend(to_sample(r, self.prompts) for r in records)
        del self.samples[: -self.capacity]  # the most recent ``capacity``

    def rescore(self, model) -> None:
        """Score every kept episode under ``model`` (the phase-start policy); keep the band."""
        was_training = model.training
        model.eval()
        try:
            self.scores = [action_token_prob(model, s) for s in self.samples]
        finally:
            model.train(was_training)
        low, high = self.band
        self.pool = [s for s, p in zip(self.samples, self.scores, strict=True) if low <= p <= high]
        log.info(
            "replay pool: %d of %d successes inside the band [%.2f, %.2f] (%d above: known, "
            "%d below: too far off the policy)",
            len(self.pool),
            len(self.samples),
            low,
            high,
            sum(p > high for p in self.scores),
            sum(p < low for p in self.scores),
        )


class ReplayTerm:
    """The step's replayed samples, spread over its micro-batches, and their loss term.

    Under several trainer processes the buffer lives on rank 0 (it gets the episodes); each step
    rank 0 draws, every rank receives the draw, and each rank takes the chunks of its own
    micro-batches. Data parallelism averages the ranks' gradients, so each rank's share is
    weighted by the number of ranks: the step's term is the one process's term.
    """

    def __init__(
        self,
        buffer: ReplayBuffer | None,
        *,
        coef: float,
        per_step: int,
        micro_batches: int,
        seed: int,
        report: Callable[[dict[str, float]], None] = lambda figures: None,
        world: World = SINGLE,
    ) -> None:
        if (buffer is not None) != world.main:
            raise ValueError("ReplayTerm: rank 0, and only rank 0, holds the buffer")
        self.buffer = buffer
        self.world = world
        self.report = report
        self.coef = coef
        self.per_step = per_step
        self.micro_batches = micro_batches
        self.seed = seed
        self._step: int | None = None
        self._chunks: list[list[Sample]] = []
        self._tokens = 0
        self._own_tokens = 0
        self.last_nll = 0.0
        self.last_count = 0

    def draw(self, step: int) -> list[Sample]:
        """The samples replayed at ``step`` (seeded by the step: a resumed run draws the same)."""
        assert self.buffer is not None, "only rank 0 draws"
        pool = self.buffer.pool
        count = min(len(pool), self.per_step)
        return random.Random(self.seed * 1_000_003 + step).sample(pool, count)

    def __call__(self, model, step: int) -> torch.Tensor | None:
        """This micro-batch's share of ``coef × mean NLL`` of the step's replayed action tokens
        (None when nothing is replayed): the shares of a step sum to the whole term, as TRL's
        own loss is already scaled for gradient accumulation."""
        if step != self._step:
            self._start(step)
            if not self._chunks:
                self._report()
        if not self._chunks:
            return None
        chunk = self._chunks.pop()
        nll = -torch.cat([action_logprobs(model, s) for s in chunk]).sum()
        self.last_nll += nll.item() / self._own_tokens
        if not self._chunks:
            self._report()
        return self.coef * self.world.size * nll / self._tokens

    def _report(self) -> None:
        """The step's figures (under several processes: rank 0's, its share for the NLL)."""
        if self.buffer is None:
            return
        self.report(
            {
                "replay_samples": self.last_count,
                "replay_nll": self.last_nll,
                "replay_pool": len(self.buffer.pool),
            }
        )

    def _start(self, step: int) -> None:
        """Draw (rank 0), share the draw, cut it into one chunk per micro-batch of the step and
        keep this rank's (every rank is at its step's first micro-batch here)."""
        drawn = distributed.broadcast(
            self.draw(step) if self.buffer is not None else None, self.world
        )
        self._step = step
        self._tokens = max(1, sum(len(s.targets) for s in drawn))
        size = math.ceil(len(drawn) / self.micro_batches) if drawn else 0
        chunks = [drawn[i : i + size] for i in range(0, len(drawn), size)] if size else []
        own = self.micro_batches // self.world.size
        self._chunks = chunks[self.world.rank * own : (self.world.rank + 1) * own]
        self._own_tokens = max(1, sum(len(s.targets) for c in self._chunks for s in c))
        self.last_count = len(drawn)
        self.last_nll = 0.0
