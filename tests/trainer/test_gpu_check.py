"""``make gpu-check``'s overlap loop plays rollouts on the schedule ``rollout.max_staleness`` sets
(the GPU timing itself is a benchmark, run where a GPU is lent)."""

from __future__ import annotations

import pytest

from scripts.gpu_check import RolloutElsewhere


@pytest.mark.parametrize("ahead", [0, 1])
def test_the_next_rollout_plays_during_the_update_only_when_one_ahead(ahead):
    rollout = RolloutElsewhere(vocab=64, seconds=0.0, ahead=ahead)
    prompts = ["page"] * 4
    try:
        for _ in range(3):
            batch = rollout(prompts, trainer=None)
            # one step's episodes came back; the next step's are in flight only one ahead
            assert len(batch["completion_ids"]) == len(prompts)
            assert len(rollout.queue) == ahead
        assert len(rollout.waits) == 3
    finally:
        rollout.generation.shutdown(cancel_futures=True)
