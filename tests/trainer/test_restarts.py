"""Restarts: the newest complete checkpoint, an episode log with each step once, and a SIGTERM
that finishes the step and saves a checkpoint (what a node drain or `helm upgrade` sends)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from services.trainer.episode_log import EpisodeLog
from services.trainer.restarts import last_complete_checkpoint
from services.trainer.rollout import Episode

ROOT = Path(__file__).resolve().parents[2]


def test_a_checkpoint_cut_off_mid_save_is_skipped(tmp_path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step})
        )
    (tmp_path / "checkpoint-9").mkdir()  # killed while writing: no trainer_state.json yet
    (tmp_path / "checkpoint-9" / "model.safetensors").write_bytes(b"half")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    assert last_complete_checkpoint(tmp_path / "nothing-here") is None


def test_the_episode_log_keeps_each_step_once_across_a_resume(tmp_path):
    log = EpisodeLog(tmp_path / "episodes.jsonl")
    for step in (1, 2, 3):
        log.append(step, [Episode("click-test", step, reward=1.0, outcome="success")] * 2)
    with log.path.open("a") as out:
        out.write('{"step": 4, "task": "cli')  # the crash cut this line
    assert log.rewind(2) == 3  # step 3's two records and the cut line
    assert [json.loads(line)["step"] for line in log.path.open()] == [1, 1, 2, 2]
    assert log.rewind(2) == 0 and not (tmp_path / "episodes.jsonl.tmp").exists()


@pytest.mark.chromium
@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_a_checkpoint_and_exits_143(tiny_chat_model, tmp_path):
    out = tmp_path / "run"
    config = {
        "run": {"output_dir": str(out)},
        "model": {"source": str(tiny_chat_model)},
        "tasks": {"train": ["click-test"], "max_turns": 2},
        "env": {"local": {"pods": 1, "max_sessions": 2}},
        "generation": {"max_new_tokens": 6, "temperature": 1.0, "batch_wait_ms": 50},
        "lora": {"enabled": False},
        "grpo": {
            "max_steps": 500,
            "prompts_per_step": 1,
            "num_generations": 2,
            "micro_batch_size": 2,
        },
        "checkpoint": {"save_steps": 1000},
        "metrics": {"port": None},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "trainer.log"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "services.trainer", "train", "--config", str(path)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while "step 2/500" not in log.read_text():
            assert trainer.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(120) == 128 + signal.SIGTERM, log.read_text()[-2000:]
    finally:
        if trainer.poll() is None:
            trainer.kill()
    saved = last_complete_checkpoint(out)
    assert saved is not None and int(Path(saved).name.split("-")[1]) >= 2
    assert (Path(saved) / "curriculum.json").is_file()
    assert not (out / "final").exists()  # not a finished run: the next pod resumes
    assert "SIGTERM: finishing this step" in log.read_text()
