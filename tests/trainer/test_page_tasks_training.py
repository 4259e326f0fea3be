"""The user's own pages train and evaluate like MiniWoB: a GRPO step and an evaluation on the
shipped examples (examples/pages), served by real env pods (Chromium) that the trainer starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.trainer.config import ConfigError, load_config
from services.trainer.envs import env_pods
from services.trainer.evaluation.run import compare
from services.trainer.loading import PolicySpec
from tests.trainer.conftest import train

pytestmark = [pytest.mark.chromium, pytest.mark.slow]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pages"
TASKS = ["pages.greet", "pages.pick-color"]


def page_config(model: Path, out: Path, **changes) -> dict:
    return {
        "run": {"output_dir": str(out)},
        "model": {"source": str(model)},
        "tasks": {"train": TASKS, "max_turns": 2},
        "env": {
            "local": {
                "pods": 1,
                "max_sessions": 4,
                "pod": {
                    "task_families": [
                        {"type": "miniwob"},
                        {"type": "pages", "name": "pages", "folder": str(EXAMPLES)},
                    ]
                },
            }
        },
        "generation": {"max_new_tokens": 8, "temperature": 1.0, "batch_wait_ms": 100},
        "lora": {"enabled": False},
        "grpo": {
            "max_steps": 1,
            "prompts_per_step": 2,
            "num_generations": 2,
            "micro_batch_size": 2,
        },
        "eval": {"seeds_per_task": 2, "max_turns": 2},
        "metrics": {"port": None},
        **changes,
    }


def test_a_grpo_step_and_an_evaluation_run_on_your_own_pages(tiny_chat_model, tmp_path):
    cfg = load_config(page_config(tiny_chat_model, tmp_path / "run"))
    with env_pods(cfg) as pods:
        training, final = train(cfg, tiny_chat_model, pods.discovery())
        assert training.trainer.state.global_step == 1
        assert training.rollout.last.episodes == 4 and training.rollout.last.dropped == 0
        records = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").open()]
        assert {r["task"] for r in records} <= set(TASKS) and len(records) == 4

        json_path, _ = compare(cfg, [PolicySpec("trained", str(final))], pods, tmp_path / "eval")
    report = json.loads(json_path.read_text())["reports"][0]
    for task in TASKS:
        score = report["scores"][task]
        assert score["episodes"] == 2 and score["dropped"] == 0


def test_a_page_task_name_is_checked_against_the_folder_before_anything_starts(
    tiny_chat_model, tmp_path
):
    config = page_config(tiny_chat_model, tmp_path)
    config["tasks"]["train"] = ["pages.greet", "pages.gret"]
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['pages.gret'\] in family pages"):
        load_config(config)
