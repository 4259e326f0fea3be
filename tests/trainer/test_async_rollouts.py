"""Rollouts that overlap the update (``rollout.max_staleness``): GRPO with LoRA over real env
pods, generating on our inference routes (vLLM's engine replaced by the recording double, as in
test_replicas.py) and pushing every adapter, one step ahead."""

from __future__ import annotations

import json

import pytest

from tests.inference.fakes import free_port, serve_policy_service
from tests.trainer.conftest import remote_lora_config, train

pytestmark = [pytest.mark.chromium, pytest.mark.slow]


def test_one_step_ahead_trains_every_step_on_episodes_at_most_one_version_old(
    env_pods, tiny_chat_model, tmp_path
):
    from transformers import TrainerCallback

    service = serve_policy_service(free_port(), tiny_chat_model, tmp_path)
    cfg = remote_lora_config(
        tiny_chat_model, tmp_path / "run", [service.url], rollout={"max_staleness": 1}
    )
    ahead_at_step_end: list[int] = []

    class Ahead(TrainerCallback):
        """While a step finishes (update done, push next), the next step's rollout is already
        being played."""

        def __init__(self, training) -> None:
            self.rollout = training.rollout

        def on_step_end(self, args, state, control, **kwargs):
            ahead_at_step_end.append(len(self.rollout._ahead))

    try:
        training, final = train(
            cfg, tiny_chat_model, env_pods, callbacks=lambda training: [Ahead(training)]
        )
    finally:
        service.stop()
    assert training.trainer.state.global_step == 3 and final is not None
    assert ahead_at_step_end == [1, 1, 1]
    records = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").open()]
    assert [r["step"] for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    assert all(r["outcome"] != "dropped" for r in records)
    versions = [{v for r in records if r["step"] == s for v in r["policy_versions"]}
                for s in (1, 2, 3)]  # fmt: skip
    # Step 1 plays its own rollout; later ones were started a step earlier, so the policy that
    # sampled them is the trained one or the one before (pushed mid-rollout), never older.
    assert versions[0] == {0} and versions[1] <= {0, 1} and versions[2] <= {1, 2}
    # Answers from the version before the push are used, not retried elsewhere.
    retries = training.metrics.registry.get_sample_value("trainer_inference_retries_total")
    assert not retries
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [m for m in metrics if "rollout/wait_seconds" in m]
    assert len(steps) == 3
    assert all(m["rollout/max_staleness"] <= 1 for m in steps)
    assert all("off_policy/stale_token_fraction" in m for m in steps)
    assert service.manager.status().version == 3
