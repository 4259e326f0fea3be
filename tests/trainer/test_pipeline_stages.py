"""The pipeline's choices before anything heavy runs: what it plans to do and which
demonstrations SFT reads (no Chromium, no model)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from services.trainer import pipeline
from services.trainer.config import load_config
from services.trainer.demos import demo_requests
from services.trainer.evaluation.report import EvalError

LOCAL_CPU = "services/trainer/configs/local_cpu.yaml"


def test_the_plan_names_every_stage_with_its_budget():
    cfg = load_config(LOCAL_CPU)
    plan = pipeline.plan(cfg, evaluate_after=True)
    assert plan.startswith(
        "demonstrations (scripted, 1000 episodes over 6 tasks) -> "
        "SFT (1 epoch, teaching plain prompts) -> GRPO (8 steps"
    )
    assert "evaluation (final; base from eval.base_results, 9 tasks x 20 seeds)" in plan
    assert f"about {cfg.run.expected_minutes:.0f} min" in plan
    curriculum = load_config("services/trainer/configs/curriculum_local.yaml")
    assert "5 held-out seeds x 9 tasks at each phase start" in pipeline.plan(curriculum, True)


def test_demonstrations_on_disk_are_reused_and_said_so(tmp_path, caplog):
    cfg = load_config(LOCAL_CPU, overrides={"run.output_dir": str(tmp_path)})
    cfg.demos_folder.mkdir(parents=True)
    (cfg.demos_folder / "part-00000.jsonl").write_text("")
    with caplog.at_level(logging.INFO, logger="services.trainer"):
        sources = pipeline.sft_data(cfg, pods=None)  # no pods: nothing may be played
    assert sources == [cfg.demos_folder]
    assert "reusing 1 shard(s)" in caplog.text and "delete the folder" in caplog.text


def test_a_base_report_that_cannot_stand_beside_the_run_stops_it_before_anything_runs(tmp_path):
    """The shipped base report is checked first: a run on another model must not find out
    after an hour of training that its base column is someone else's."""
    cfg = load_config(
        LOCAL_CPU,
        overrides={"run.output_dir": str(tmp_path), "model.source": "mine", "metrics.port": None},
    )
    with pytest.raises(EvalError, match=r"this run's base is mine.*base_results to null"):
        pipeline.run(cfg, evaluate_after=True)
    assert not (tmp_path / "env-logs").exists()  # no env pod was started


def test_the_shipped_base_report_stands_beside_the_local_default():
    cfg = load_config(LOCAL_CPU)
    assert pipeline.reused_base(cfg).scores.keys() == set(cfg.eval_tasks)


def test_demonstrations_follow_the_per_task_counts():
    cfg = load_config(LOCAL_CPU)
    played = Counter(request.task for request in demo_requests(cfg))
    assert played == {task: cfg.demos.episodes_for(task) for task in cfg.tasks.names}
    assert played["click-link"] == 260 and played["click-dialog-2"] == 150  # named, default
    seeds = [r.seed for r in demo_requests(cfg) if r.task == "click-link"]
    assert seeds == list(range(cfg.demos.seed_start, cfg.demos.seed_start + 260))
