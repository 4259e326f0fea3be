"""Trajectory records: what a played episode saves, read back exactly, loadable by `datasets`,
never torn by a crash."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from services.protocol.trajectory import Trajectory
from services.trainer.config import load_config
from services.trainer.discovery import StaticDiscovery
from services.trainer.generation.scripted import ScriptedBackend
from services.trainer.rollout import EpisodeRequest
from services.trainer.stack import RolloutStack
from services.trainer.trajectories import TrajectoryWriter, read_trajectories


@pytest.mark.chromium
def test_played_episodes_round_trip_with_their_exact_tokens(env_pods, tiny_base_model, tmp_path):
    cfg = load_config(
        {
            "model": {"source": str(tiny_base_model)},
            "tasks": {"train": ["enter-text"], "max_turns": 3},
            "env": {"discovery": {"endpoints": env_pods}},
            "grpo": {"max_steps": 1},
            "metrics": {"port": None},
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    stack = RolloutStack(cfg, tokenizer, ScriptedBackend(tokenizer), StaticDiscovery(env_pods))
    try:
        episodes = stack.play([EpisodeRequest("enter-text", seed=s) for s in (4, 5)])
        records = stack.records(episodes, "scripted")
    finally:
        stack.close()
    writer = TrajectoryWriter(tmp_path / "demos")
    writer.add(records)
    writer.flush()

    (first, second) = read_trajectories([tmp_path / "demos"])
    episode = episodes[0]
    assert first == records[0] and first.success and first.source == "scripted"
    assert (first.prompt_ids, first.completion_ids) == (episode.prompt_ids, episode.completion_ids)
    assert first.goal.startswith("Enter") and len(first.turns) == episode.turns == 2
    fill, click = first.turns
    assert fill.action.startswith("fill(") and click.action.startswith("click(")
    assert "textbox" in fill.observation and fill.error == "" and click.reward == 1.0
    # The turn's slice holds exactly the policy's tokens for that action, all env_mask 1.
    assert tokenizer.decode(first.completion_ids[fill.start : fill.end]).strip() == fill.action
    assert set(first.env_mask[fill.start : fill.end]) == {1}
    assert set(first.env_mask[fill.end : click.start]) == {0}  # the env's reply between them
    assert first.prompt_format == "fewshot" and first.tokenizer == tokenizer.name_or_path
    assert second.seed == 5


def test_shards_are_whole_a_crash_loses_only_unflushed_records_and_datasets_loads_them(
    tmp_path,
):
    import datasets

    record = Trajectory(
        task="click-test", seed=1, source="scripted", policy="rules", tokenizer="t",
        prompt_format="fewshot", max_turns=3, prompt_ids=[1, 2], completion_ids=[3, 4, 5],
        env_mask=[1, 1, 0], logprobs=[0.0, 0.0, 0.0],
        turns=[{"observation": "[13] button", "action": "click('13')", "start": 0, "end": 2}],
        reward=1.0, outcome="success",
    )  # fmt: skip
    writer = TrajectoryWriter(tmp_path)
    writer.add([record, record])
    writer.flush()
    writer.add([record])  # the process dies before this flush
    (tmp_path / ".part-00001.jsonl.tmp").write_text('{"task": "cli')  # a half-written shard
    reopened = TrajectoryWriter(tmp_path)
    reopened.add([record])
    assert reopened.flush().name == "part-00001.jsonl"
    assert len(list(read_trajectories([tmp_path]))) == 3
    rows = datasets.load_dataset("json", data_files=str(tmp_path / "part-*.jsonl"))["train"]
    assert rows.num_rows == 3 and rows[0]["completion_ids"] == [3, 4, 5]
    with pytest.raises(ValueError, match="turn tokens"):
        Trajectory.model_validate(
            {**record.model_dump(), "turns": [{**record.turns[0].model_dump(), "end": 9}]}
        )
