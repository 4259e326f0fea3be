"""The trainer CLI against a real vLLM CPU server and real env pods, through the restarts a
cluster puts it through (``make test-vllm``):

- the trainer starts before the inference server (a cold GPU node pulls vLLM's image for
  minutes): it waits for the server and then trains, instead of dropping whole rollouts as
  optimizer steps and crash-looping on failed pushes;
- the trainer is killed after it pushed versions past its last checkpoint and restarts: it
  resumes from the checkpoint, takes the server back to that version (restart), trains on, and
  the server ends up serving the resumed run's policy; episodes.jsonl holds every step once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from services.env.local import free_port, start_local_env_pods
from tests.inference.conftest import serve

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.chromium]
ROOT = Path(__file__).resolve().parents[2]
MAX_MODEL_LEN = 2048  # the few-shot prompt of the tiny tokenizer is ~900 tokens


@pytest.fixture(scope="module")
def env_pod():
    with start_local_env_pods(1, max_sessions=4, ready_timeout_s=300) as urls:
        yield urls[0]


def trainer_config(
    model: Path, out: Path, env_url: str, server_url: str, save_steps: int = 100, **grpo
) -> Path:
    config = {
        "run": {"output_dir": str(out)},
        "model": {"source": str(model)},
        "tasks": {"train": ["click-test"], "max_turns": 2},
        "env": {"discovery": {"endpoints": [env_url]}, "sessions_per_endpoint": 4},
        "generation": {
            "backend": {
                "type": "remote",
                "servers": {"endpoints": [server_url]},
                "wait_ready_s": 600,
            },
            "max_new_tokens": 6,
            "temperature": 1.0,
            "batch_wait_ms": 100,
        },
        "prompt": {"axtree_max_tokens": 128, "max_prompt_tokens": MAX_MODEL_LEN - 16},
        "lora": {"enabled": True, "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "grpo": {"prompts_per_step": 1, "num_generations": 2, "micro_batch_size": 2, **grpo},
        "policy_sync": {
            "enabled": True,
            "servers": {"endpoints": [server_url]},
            "wait_ready_s": 600,
        },
        "checkpoint": {"save_steps": save_steps, "save_total_limit": None},
        "metrics": {"port": None},
        "eval": {"after_training": False},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_trainer(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.trainer", "train", "--config", str(config), *extra],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def finish(trainer: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    try:
        code = trainer.wait(timeout_s)
    except subprocess.TimeoutExpired:
        trainer.kill()
        raise
    assert code == 0, log.read_text()[-3000:]


def served(url: str) -> dict:
    return httpx.get(f"{url}/v1/policy", timeout=10).json()


def test_a_trainer_started_before_the_server_waits_for_it_then_trains(env_pod, tiny_lfm2, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = trainer_config(tiny_lfm2, tmp_path / "run", env_pod, url, max_steps=2)
    log = tmp_path / "trainer.log"
    trainer = start_trainer(config, log)
    try:
        # the trainer comes up and waits; nothing listens on the port yet (polled: a loaded
        # machine takes its time to import and load the model)
        deadline = time.monotonic() + 300
        while "waiting for a generation server" not in log.read_text():
            assert trainer.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        with serve(
            tiny_lfm2, tmp_path / "service", port=port, max_model_len=MAX_MODEL_LEN
        ) as server:
            finish(trainer, log)
            assert served(server)["version"] == 2
    finally:
        if trainer.poll() is None:
            trainer.kill()
    text = log.read_text()
    assert "no optimizer step on nothing" not in text  # no rollout was dropped whole
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and all("dropped" not in line for line in lines)


def test_a_trainer_killed_past_its_checkpoint_resumes_and_the_server_follows(
    env_pod, tiny_lfm2, tmp_path
):
    with serve(tiny_lfm2, tmp_path / "service", max_model_len=MAX_MODEL_LEN) as server:
        out = tmp_path / "run"
        config = trainer_config(tiny_lfm2, out, env_pod, server, max_steps=6, save_steps=3)
        log = tmp_path / "trainer.log"
        first = start_trainer(config, log)
        deadline = time.monotonic() + 600
        while served(server)["version"] < 4:  # pushed past checkpoint-3
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        killed_at = served(server)["version"]
        assert 4 <= killed_at < 6 and (out / "checkpoint-3").is_dir()
        assert not (out / "checkpoint-6").exists()

        second = start_trainer(config, log, "--set", "checkpoint.resume_from_checkpoint=true")
        finish(second, log)
        status = served(server)
        assert status["version"] == 6
        assert status["adapter"].endswith("-r1")  # re-established once, names never reused
        text = log.read_text()
        assert "pushing the trainer's policy (restart)" in text
        assert "refused" not in text
        steps = [json.loads(line)["step"] for line in (out / "episodes.jsonl").open()]
        assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6]
        assert all(steps.count(s) == 2 for s in set(steps))  # each step once (2 episodes)
