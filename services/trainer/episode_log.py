"""``episodes.jsonl``: one JSON line per training episode, exactly once per step across resumes.

The per-step line shows rates; this file shows the actions behind them (e.g. which wrong element
a task keeps clicking), so a run can be read afterwards without re-playing it. A run killed after
writing step N's episodes but before its checkpoint replays step N when it resumes: ``rewind``
first drops every record of a step after the resumed one (and a line cut by the crash), so each
step's episodes appear once. ``StepRecords`` is that file's rule for any per-step JSON lines
(``metrics.jsonl`` too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from services.trainer.rollout import Episode


class StepRecords:
    """A JSON-lines file of per-step records in which each step appears once across resumes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict]:
        """Every record, in order (none when the file is missing; a line a crash cut is
        skipped)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def write(self, records: Iterable[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            for record in records:
                out.write(json.dumps(record) + "\n")

    def rewind(self, last_step: int, stage: str | None = None) -> int:
        """Keep only records of steps <= ``last_step`` (atomically); returns how many went.
        With ``stage``, only that stage's records are rewound (a resumed GRPO keeps SFT's)."""
        if not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
                step = record["step"]
            except (ValueError, KeyError, TypeError):
                dropped += 1  # a line the crash cut short
                continue
            if step <= last_step or (stage is not None and record.get("stage") != stage):
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            scratch = self.path.with_suffix(".jsonl.tmp")
            scratch.write_text("".join(line + "\n" for line in kept))
            os.replace(scratch, self.path)
        return dropped


class EpisodeLog(StepRecords):
    def append(
        self, step: int, episodes: Sequence[Episode], frames: Sequence[dict | None] = ()
    ) -> None:
        """The step's episodes (with ``frames``: each one's ``FrameWriter`` index)."""
        frames = list(frames) or [None] * len(episodes)
        self.write(_record(step, e, f) for e, f in zip(episodes, frames, strict=True))


def _record(step: int, episode: Episode, frames: dict | None) -> dict:
    record = {"step": step, **episode.facts(), "policy_versions": episode.policy_versions}
    if episode.drop_reason:
        record["drop_reason"] = episode.drop_reason
    if frames:
        record["frames"] = frames
    return record
