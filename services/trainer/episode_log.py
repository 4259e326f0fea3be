"""``episodes.jsonl``: one JSON line per training episode, exactly once per step across resumes.

The per-step line shows rates; this file shows the actions behind them (e.g. which wrong element
a task keeps clicking), so a run can be read afterwards without re-playing it. A run killed after
writing step N's episodes but before its checkpoint replays step N when it resumes: ``rewind``
first drops every record of a step after the resumed one (and a line cut by the crash), so each
step's episodes appear once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from services.trainer.rollout import Episode


class EpisodeLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, step: int, episodes: Sequence[Episode]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            for e in episodes:
                record = {"step": step, **e.facts(), "policy_versions": e.policy_versions}
                if e.drop_reason:
                    record["drop_reason"] = e.drop_reason
                out.write(json.dumps(record) + "\n")

    def rewind(self, last_step: int) -> int:
        """Keep only records of steps <= ``last_step`` (atomically); returns how many went."""
        if not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                dropped += 1  # a line the crash cut short
                continue
            if step <= last_step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            scratch = self.path.with_suffix(".jsonl.tmp")
            scratch.write_text("".join(line + "\n" for line in kept))
            os.replace(scratch, self.path)
        return dropped
