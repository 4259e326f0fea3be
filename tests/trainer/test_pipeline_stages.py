"""The pipeline's choices before anything heavy runs: what it plans to do and which
demonstrations SFT reads (no Chromium, no model)."""

from __future__ import annotations

import logging

from services.trainer import pipeline
from services.trainer.config import load_config

LOCAL_CPU = "services/trainer/configs/local_cpu.yaml"


def test_the_plan_names_every_stage_with_its_budget():
    cfg = load_config(LOCAL_CPU)
    plan = pipeline.plan(cfg, evaluate_after=True)
    assert plan.startswith(
        "demonstrations (scripted, 40 x 6 tasks) -> SFT (2 epochs) -> GRPO (8 steps"
    )
    assert "evaluation (base and final, 9 tasks x 20 seeds)" in plan
    assert f"about {cfg.run.expected_minutes:.0f} min" in plan


def test_demonstrations_on_disk_are_reused_and_said_so(tmp_path, caplog):
    cfg = load_config(LOCAL_CPU, overrides={"run.output_dir": str(tmp_path)})
    cfg.demos_folder.mkdir(parents=True)
    (cfg.demos_folder / "part-00000.jsonl").write_text("")
    with caplog.at_level(logging.INFO, logger="services.trainer"):
        sources = pipeline.sft_data(cfg, pods=None)  # no pods: nothing may be played
    assert sources == [cfg.demos_folder]
    assert "reusing 1 shard(s)" in caplog.text and "delete the folder" in caplog.text
