"""`make up` end to end: scripts/local_stack.py starts an env pod, the REAL trainer process
(`python -m services.trainer train`, a tiny random model so it trains in seconds) and a real
Prometheus; the test watches the trainer's and the env pod's series arrive in Prometheus while
training runs, then stops the stack with Ctrl-C (SIGINT) like a person would, even when it was
started from a script in the background (which starts it with SIGINT ignored)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from scripts.local_stack import NAMESPACE, query
from services.env.local import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.chromium, pytest.mark.slow]


def trainer_config(model_dir: Path, out_dir: Path) -> dict:
    return {
        "run": {"output_dir": str(out_dir)},
        "model": {"source": str(model_dir)},
        "tasks": {"train": ["click-test"], "max_turns": 2},
        "env": {"local": {"pods": 1, "max_sessions": 4}, "sessions_per_endpoint": 4},
        "generation": {"max_new_tokens": 6, "temperature": 1.0, "batch_wait_ms": 200},
        "lora": {"enabled": False},
        "grpo": {
            # Enough steps that a 1 s scrape sees training live: with sessions reused a step
            # takes well under a second and the trainer exits right after its last one.
            "max_steps": 30,
            "prompts_per_step": 1,
            "num_generations": 2,
            "micro_batch_size": 2,
        },
        "checkpoint": {"save_steps": 10},
        "eval": {"after_training": False},
    }


def wait_for(prometheus: str, promql: str, stack: subprocess.Popen, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert stack.poll() is None, f"make up's stack exited early with {stack.returncode}"
        try:
            result = query(prometheus, promql)
        except Exception:  # Prometheus still starting
            result = []
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"{promql} did not arrive within {timeout_s} s")


def test_make_up_runs_the_stack_and_prometheus_sees_training(tmp_path):
    from services.trainer.models import build_random_model

    model = build_random_model("qwen2", tmp_path / "tiny", size="tiny")
    config = tmp_path / "trainer.yaml"
    config.write_text(yaml.safe_dump(trainer_config(model, tmp_path / "run")))
    port = free_port()
    logs = tmp_path / "stack"
    stack = subprocess.Popen(
        [
            sys.executable,
            "scripts/local_stack.py",
            "--config",
            str(config),
            "--prometheus-port",
            str(port),
            "--scrape-interval",
            "1",
            "--keep",
            "--log-dir",
            str(logs),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # What `make up &` in a non-interactive shell does: the child starts with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    prometheus = f"http://127.0.0.1:{port}"
    ns = f'namespace="{NAMESPACE}"'
    try:
        wait_for(prometheus, f"browserenv_sessions_capacity{{{ns}}}", stack, 180)
        # Steps seen live (the trainer exits right after its last step, possibly between scrapes).
        wait_for(prometheus, f"max_over_time(trainer_global_step{{{ns}}}[10m]) >= 2", stack, 420)
        wait_for(prometheus, f"max_over_time(trainer_episodes_total{{{ns}}}[10m]) > 0", stack, 30)
        wait_for(prometheus, f"browserenv_episodes_total{{{ns}}} > 0", stack, 30)
        wait_for(prometheus, f"trainer_step_seconds_count{{{ns},phase='rollout'}}", stack, 30)
    except AssertionError as exc:
        log = logs / "trainer.log"
        tail = log.read_text()[-3000:] if log.exists() else "(no trainer log)"
        raise AssertionError(f"{exc}\ntrainer log tail:\n{tail}") from None
    finally:
        stack.send_signal(signal.SIGINT)
        output, _ = stack.communicate(timeout=120)
    assert stack.returncode == 0, output
    assert "Prometheus: " in output
