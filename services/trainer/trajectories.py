"""Saving played episodes as trajectory records, and reading them back (datasets for SFT, replay).

A ``TrajectoryWriter`` appends records to a folder in shards: records collect in memory and each
``flush`` writes them as one new ``part-NNNNN.jsonl`` file through a temporary name and a rename,
so a crash loses at most the unflushed records and never leaves a torn file; a reopened folder
continues after its last shard. The format is ``services/protocol/trajectory.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from services.protocol.trajectory import Source, Trajectory, TurnRecord
from services.trainer.rollout import Episode

SHARD_PATTERN = "part-*.jsonl"


def to_record(
    episode: Episode,
    *,
    source: Source,
    policy: str,
    tokenizer: str,
    prompt_format: str,
    max_turns: int,
    policy_version: int | None = None,
) -> Trajectory:
    """The record of a played (not dropped) episode."""
    if episode.dropped:
        raise ValueError("a dropped episode was not played: it has no trajectory")
    return Trajectory(
        task=episode.task,
        seed=episode.seed,
        goal=episode.goal,
        source=source,
        policy=policy,
        policy_version=policy_version,
        tokenizer=tokenizer,
        prompt_format=prompt_format,
        max_turns=max_turns,
        prompt_ids=episode.prompt_ids,
        completion_ids=episode.completion_ids,
        env_mask=episode.env_mask,
        logprobs=episode.logprobs,
        turns=[
            TurnRecord(
                observation=t.observation,
                action=t.action,
                error=t.error,
                reward=t.reward,
                start=t.start,
                end=t.end,
            )
            for t in episode.turn_log
        ],
        final_observation=episode.final_observation,
        reward=episode.reward,
        outcome=episode.outcome,
    )


class TrajectoryWriter:
    """Appends trajectory records to ``folder`` in atomically written shards."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pending: list[Trajectory] = []
        shards = [_shard_number(p) for p in self.folder.glob(SHARD_PATTERN)]
        self._next = 1 + max(shards, default=-1)
        self.written = 0

    def add(self, records: Iterable[Trajectory]) -> None:
        self._pending.extend(records)

    def flush(self) -> Path | None:
        """Write the pending records as the next shard; its path (None when nothing waited)."""
        if not self._pending:
            return None
        shard = self.folder / f"part-{self._next:05d}.jsonl"
        scratch = shard.with_name(f".{shard.name}.tmp")
        with scratch.open("w") as out:
            for record in self._pending:
                out.write(record.model_dump_json() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, shard)
        self.written += len(self._pending)
        self._pending.clear()
        self._next += 1
        return shard


def _shard_number(path: Path) -> int:
    return int(path.stem.removeprefix("part-"))


def read_trajectories(sources: Sequence[str | Path]) -> Iterator[Trajectory]:
    """Every record in the given folders (their shards, in order) or ``.jsonl`` files."""
    for source in sources:
        path = Path(source)
        files = sorted(path.glob(SHARD_PATTERN)) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no trajectory shards ({SHARD_PATTERN}) in {path}")
        for file in files:
            with file.open() as lines:
                for number, line in enumerate(lines, 1):
                    try:
                        yield Trajectory.model_validate(json.loads(line))
                    except ValueError as exc:
                        message = f"{file}:{number}: not a trajectory record: {exc}"
                        raise ValueError(message) from exc
