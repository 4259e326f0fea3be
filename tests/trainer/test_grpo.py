"""GRPO end to end: TRL's GRPOTrainer, a tiny random model and real env pods (Chromium)."""

from __future__ import annotations

import json
import os
import re
import signal
import uuid

import psutil
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.config import load_config
from services.trainer.episode_log import StepRecords
from services.trainer.grpo import build_training, run_training
from services.trainer.plots import draw_plots
from services.trainer.rollout import Episode
from services.trainer.trl_batch import to_trl_batch
from tests.trainer.conftest import train

pytestmark = [pytest.mark.chromium, pytest.mark.slow]

TASKS = ("click-test", "enter-text")
HELD_OUT = "click-button"


def _config(model_dir, out_dir, curriculum="round_robin", **grpo):
    return load_config(
        {
            "run": {"output_dir": str(out_dir)},
            "model": {"source": str(model_dir)},
            "tasks": {"train": list(TASKS), "max_turns": 2},
            "curriculum": {"type": curriculum},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}, "sessions_per_endpoint": 4},
            "generation": {"max_new_tokens": 6, "temperature": 1.0, "batch_wait_ms": 200},
            "lora": {"enabled": False},
            "grpo": {
                "max_steps": 2,
                "prompts_per_step": 2,
                "num_generations": 2,
                "micro_batch_size": 2,
                **grpo,
            },
            "checkpoint": {"save_steps": 1, "save_total_limit": None},
            "metrics": {"port": None},
        }
    )


def _metric(training, name, **labels) -> float:
    return training.metrics.registry.get_sample_value(name, labels) or 0.0


def _measured_each_phase(cfg):
    """``cfg`` measuring its policy at each 1-step phase: 1 held-out seed of each trained task
    and of a held-out one, 2 turns (a random policy's 10 turns would only cost time)."""
    evaluation = {"tasks": [*TASKS, HELD_OUT], "phase_seeds": 1, "max_turns": 2}
    return cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(update=evaluation),
            "grpo": cfg.grpo.model_copy(update={"phase_steps": 1}),
        }
    )


def test_grpo_steps_checkpoint_and_resume_with_the_same_step_count(
    env_pods, tiny_chat_model, tmp_path
):
    cfg = _config(tiny_chat_model, tmp_path / "run", curriculum="learnability")
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"frames_every_steps": 2})})
    training, final = train(_measured_each_phase(cfg), tiny_chat_model, env_pods)

    assert training.trainer.state.global_step == 2
    assert (final / "model.safetensors").is_file()
    assert {p.name for p in (tmp_path / "run").glob("checkpoint-*")} == {
        "checkpoint-1",
        "checkpoint-2",
    }
    assert len(training.progress.lines) == 2 and "reward" in training.progress.lines[0]
    assert _metric(training, "trainer_global_step") == 2
    episodes = sum(
        _metric(training, "trainer_episodes_total", task=t, outcome=o)
        for t in TASKS
        for o in ("success", "failure", "truncated")
    )
    assert episodes == 2 * 4  # 2 steps x 2 groups x 2 episodes, none dropped
    logged = [h for h in training.trainer.state.log_history if "rollout/success_rate" in h]
    assert len(logged) == 2
    # The step line says what each task scored; episodes.jsonl keeps every episode's actions.
    assert re.search(r"(click-test|enter-text) \d/\d", training.progress.lines[0])
    records = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").open()]
    assert [r["step"] for r in records] == [1] * 4 + [2] * 4
    assert {r["task"] for r in records} <= set(TASKS)
    # The curriculum chose each group's task and publishes the next step's shares.
    shares = [_metric(training, "trainer_curriculum_weight", task=t) for t in TASKS]
    assert all(s > 0 for s in shares) and sum(shares) == pytest.approx(1.0)
    assert all(r["turns"] == len(r["actions"]) >= 1 for r in records)
    # Every 2nd step keeps each turn's page and the element its action named.
    assert [("frames" in r) for r in records] == [False] * 4 + [True] * 4
    for r in records[4:]:
        turns = r["frames"]["turns"]
        assert [t["action"] for t in turns] == [*r["actions"], None]
        assert all((tmp_path / "run" / t["file"]).is_file() for t in turns)
        assert r["frames"]["gif"].startswith("frames/step-2/")
    # metrics.jsonl keeps every logged step for the plots: TRL's figures and ours.
    steps = StepRecords(tmp_path / "run" / "metrics.jsonl").read()
    per_step = [r for r in steps if "loss" in r]
    assert [(r["stage"], r["step"]) for r in per_step] == [("grpo", 1), ("grpo", 2)]
    assert all(
        {"reward", "update/seconds", "rollout/seconds", "rollout/max_staleness"} <= r.keys()
        and any(k.startswith("success/") for k in r)
        and {f"curriculum/{t}" for t in TASKS} <= r.keys()
        for r in per_step
    )
    # The policy on held-out seeds at the start and at each phase's end, outside the training
    # figures above: the episode counts and episodes.jsonl hold training's episodes alone.
    measured = [r for r in steps if r["stage"] == "phase_eval"]
    assert [r["step"] for r in measured] == [0, 1, 2]
    for r in measured:
        assert r["episodes"] + r["dropped"] == 3 and r["seeds_per_task"] == 1
        assert {f"success/{t}" for t in (*TASKS, HELD_OUT)} <= r.keys()
        assert 0 <= r["trained"] <= 1 and r["held_out"] == r[f"success/{HELD_OUT}"]
    assert _metric(training, "trainer_phase_eval_step") == 2
    assert _metric(training, "trainer_training") == 0  # training ended
    assert "phase_eval.png" in {p.name for p in draw_plots(tmp_path / "run" / "metrics.jsonl",
                                                             tmp_path / "plots")}  # fmt: skip

    # Resume from the newest checkpoint: the count continues at 2, one more step to 3.
    resumed_cfg = _config(tiny_chat_model, tmp_path / "run", max_steps=3)
    resumed_cfg = resumed_cfg.model_copy(
        update={
            "checkpoint": resumed_cfg.checkpoint.model_copy(update={"resume_from_checkpoint": True})
        }
    )
    resumed, _ = train(_measured_each_phase(resumed_cfg), tiny_chat_model, env_pods)
    assert resumed.trainer.state.global_step == 3
    assert len(resumed.progress.lines) == 1 and resumed.progress.lines[0].startswith("step 3/3")
    steps = StepRecords(tmp_path / "run" / "metrics.jsonl").read()
    per_step = [r for r in steps if "loss" in r]
    assert [r["step"] for r in per_step] == [1, 2, 3]  # each step once across the resume
    # step 2 was measured before the stop: the resumed run measures step 3 only
    assert [r["step"] for r in steps if r["stage"] == "phase_eval"] == [0, 1, 2, 3]


def test_trackers_get_the_per_task_success_beside_trls_figures(env_pods, tiny_chat_model, tmp_path):
    """run.report_to: TensorBoard's event files and trackio's database hold our series, read
    back with each tracker's own reader (trackio's database is the session's TRACKIO_DIR:
    conftest.py)."""
    name = f"run-{uuid.uuid4().hex[:8]}"  # trackio's runs are named after the run folder
    cfg = _config(tiny_chat_model, tmp_path / name, max_steps=1)
    cfg = cfg.model_copy(
        update={"run": cfg.run.model_copy(update={"report_to": ["tensorboard", "trackio"]})}
    )
    train(cfg, tiny_chat_model, env_pods)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (tmp_path / name / "runs").rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(events))
    board.Reload()
    tags = board.Tags()["scalars"]
    assert {"train/loss", "train/rollout/success_rate"} <= set(tags)
    success = [t for t in tags if t.startswith("train/success/")]
    assert success and {t.removeprefix("train/success/") for t in success} <= set(TASKS)
    assert all(0.0 <= e.value <= 1.0 for t in success for e in board.Scalars(t))

    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("browser-rl", f"{name}/grpo")
    series = {k for entry in logs for k in entry if k.startswith("train/success/")}
    assert series and {k.removeprefix("train/success/") for k in series} <= set(TASKS)


@pytest.fixture
def doomed_pods():
    """Two extra pods for a test that kills one (the session pods stay intact)."""
    from services.env.local import start_local_env_pods

    with start_local_env_pods(2, max_sessions=4, ready_timeout_s=300) as urls:
        yield urls


def _kill_pod(url: str) -> None:
    """SIGKILL the env server listening on ``url`` (a pod we started) and its browsers."""
    port = int(url.rsplit(":", 1)[1])
    (pid,) = {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
    }
    children = psutil.Process(pid).children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    for child in children:
        child.kill()


def test_killing_an_env_pod_mid_rollout_loses_no_training_step(
    doomed_pods, tiny_chat_model, tmp_path
):
    cfg = _config(tiny_chat_model, tmp_path / "run", max_steps=1)
    training = build_training(
        cfg,
        doomed_pods,
        model=AutoModelForCausalLM.from_pretrained(tiny_chat_model),
        tokenizer=AutoTokenizer.from_pretrained(tiny_chat_model),
    )
    batcher = training.stack.engine.replies
    real_backend = batcher.backend
    victim = doomed_pods[0]

    class KillsAPodOnce:
        """Generates normally; before the first batch, pod 0 dies (sessions open on it)."""

        killed = False

        async def generate(self, prompts, params, episodes=None):
            if not self.killed:
                assert training.stack.pool.active_sessions()[victim] > 0
                _kill_pod(victim)
                self.killed = True
            return await real_backend.generate(prompts, params, episodes)

        async def close(self):
            await real_backend.close()

    batcher.backend = KillsAPodOnce()
    try:
        run_training(training, cfg)
    finally:
        training.close()

    assert training.trainer.state.global_step == 1
    stats = training.rollout.last
    assert stats.dropped == 0 and stats.episodes == 4  # every episode replayed and scored
    assert stats.infra_retries > 0
    assert _metric(training, "trainer_infra_retries_total", reason="env_unavailable") > 0


def test_dropped_episode_is_neutral_in_its_group():
    """A sample dropped after repeated infra failures gets no gradient and no advantage."""
    played = [
        Episode("click-test", 1, [5, 6], [7, 2], [1, 0], [-0.5, 0.0], reward=r, outcome=o)
        for r, o in ((1.0, "success"), (0.0, "failure"))
    ]
    dropped = Episode("click-test", 1, outcome="dropped")
    batch = to_trl_batch(["p", "p", "p"], [*played, dropped], eos_id=2)
    assert batch["env_reward"] == [1.0, 0.0, 0.5]  # the group's mean: advantage 0
    assert batch["env_mask"][2] == [0] and batch["completion_ids"][2] == [2]
    assert batch["prompt_ids"][2] == [5, 6]
    assert batch["dropped"] == [False, False, True]
