"""A run's stages end to end on a tiny model and real env pods: scripted demonstrations → SFT →
GRPO with WebRL's phases, KL to the phase-start policy and replay → base-vs-final evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from services.trainer import pipeline
from services.trainer.config import load_config
from services.trainer.demos import generate_demos
from services.trainer.envs import env_pods as env_pods_of
from services.trainer.grpo import build_training, run_training
from services.trainer.trajectories import read_trajectories

pytestmark = [pytest.mark.chromium, pytest.mark.slow]
TASKS = ["click-button", "enter-text"]
CONFIGS = Path(__file__).resolve().parents[2] / "services" / "trainer" / "configs"


def _config(model, out, env_pods, **changes) -> dict:
    config = {
        "run": {"output_dir": str(out)},
        "model": {"source": str(model)},
        "tasks": {"train": TASKS, "max_turns": 3},
        "env": {"discovery": {"endpoints": env_pods}},
        "prompt": {"action_subsets": ["miniwob_liu18"]},
        "generation": {"max_new_tokens": 10, "temperature": 1.0, "batch_wait_ms": 100},
        "demos": {"episodes_per_task": 2},
        "sft": {
            "enabled": True,
            "epochs": 2,
            "micro_batch_size": 2,
            "learning_rate": 1e-2,
            "warmup_ratio": 0.0,
            "prompt_format": "plain",  # taught by SFT, read by GRPO and the trained policy
        },
        "grpo": {
            "max_steps": 2,
            "prompts_per_step": 2,
            "num_generations": 2,
            "micro_batch_size": 2,
            "beta": 0.04,
            "phase_steps": 1,
        },
        # the random model knows no action: a band from ~0 lets the demos be replayed
        "replay": {"enabled": True, "min_prob": 1e-9, "ratio": 0.5, "coef": 1.0},
        "eval": {"seeds_per_task": 1, "max_turns": 2},
        "metrics": {"port": None},
    }
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def test_demonstrations_sft_grpo_and_evaluation_run_in_order(env_pods, tiny_chat_model, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(_config(tiny_chat_model, out, env_pods))
    assert pipeline.run(cfg, evaluate_after=True) == 0

    demos = list(read_trajectories([out / "demos" / "scripted"]))
    assert len(demos) == 4 and all(d.success for d in demos)
    history = json.loads(next((out / "sft").glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [e["loss"] for e in history["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]  # SFT learned the demonstrated actions
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    assert (out / "final" / "adapter_config.json").is_file()
    assert not (out / "final" / "ref").exists()  # the KL reference is not part of the policy
    assert len(list(read_trajectories([out / "replay"]))) >= 4  # seeded with the demos
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert [r["label"] for r in report["reports"]] == ["base", "trained"]
    assert report["reports"][1]["model"] == str(out / "sft" / "model")  # the adapter's base
    # The base model reads its own (chat) prompts; the trained policy the format SFT taught.
    assert [r["prompt_format"] for r in report["reports"]] == ["chat", "plain"]
    assert "Prompt format: base chat, trained plain." in (out / "eval" / "eval.md").read_text()


class ReferenceProbe(TrainerCallback):
    """Records, before each step, whether the ``ref`` adapter equals the live ``default`` one."""

    def __init__(self, model) -> None:
        self.model, self.same = model, []

    def on_step_begin(self, args, state, control, **kwargs):
        params = dict(self.model.named_parameters())
        pairs = [(n, n.replace(".default.", ".ref.")) for n in params if ".default." in n]
        self.same.append(all(torch.equal(params[a], params[b]) for a, b in pairs))


@pytest.mark.parametrize("phase_steps", [1, 0])
def test_the_kl_reference_follows_the_phases_in_a_real_grpo_run(
    env_pods, tiny_chat_model, tmp_path, phase_steps
):
    out = tmp_path / "run"
    changes = {
        "grpo": {"phase_steps": phase_steps},
        "sft": {"enabled": False},
        "demos": {"output": str(out / "replay")},  # demonstrations straight into the buffer
    }
    cfg = load_config(_config(tiny_chat_model, out, env_pods, **changes))
    with env_pods_of(cfg) as pods:
        generate_demos(cfg, pods)
    training = build_training(cfg, env_pods)
    try:
        model = training.trainer.model
        assert "ref" in model.peft_config  # LoRA + beta > 0: TRL's frozen copy of the adapter
        probe = ReferenceProbe(model)
        training.trainer.add_callback(probe)
        run_training(training, cfg)
    finally:
        training.close()
    # The replay term moves the adapter every step; the reference follows at each boundary only.
    assert probe.same == ([True, True] if phase_steps else [True, False])


def test_the_lfm2_sft_grpo_config_runs_on_a_random_lfm2(env_pods, tmp_path):
    """The reference SFT + GRPO config, its stages as written, on a random LFM2 (the real weights
    need the hub) with the cluster parts swapped for local ones: env pods found statically, the
    trainer generating itself instead of vLLM, no policy push, CPU, a tiny budget."""
    from transformers import AutoTokenizer

    from services.trainer.models import build_random_model
    from services.trainer.prompts import PromptBuilder
    from services.trainer.sft import tokens_of
    from tests.trainer.test_sft import trained_text

    model = build_random_model("lfm2", tmp_path / "lfm2", size="tiny")
    local = {
        "run.output_dir": str(tmp_path / "run"),
        "model.source": str(model),
        "model.dtype": "float32",
        "use_cpu": True,
        "env.discovery": {"type": "static", "endpoints": env_pods},
        "generation.backend": {"type": "local"},
        "policy_sync.enabled": False,
        "demos.episodes_per_task": 1,
        "sft.micro_batch_size": 4,
        "grpo.max_steps": 1,
        "grpo.prompts_per_step": 1,
        "grpo.num_generations": 2,
        "grpo.micro_batch_size": 2,
        "eval.after_training": False,
        "metrics.port": None,
    }
    cfg = load_config(CONFIGS / "lfm2_350m_sft_grpo.yaml", overrides=local)
    assert (cfg.grpo.beta, cfg.grpo.phase_steps, cfg.replay.enabled) == (0.04, 25, True)
    assert pipeline.run(cfg, evaluate_after=False) == 0
    out = tmp_path / "run"
    assert (out / "final" / "model.safetensors").is_file()  # full fine-tune
    demos = list(read_trajectories([out / "demos" / "scripted"]))
    assert len(demos) == 7 and all(d.success for d in demos)
    prompts = PromptBuilder.from_config(AutoTokenizer.from_pretrained(model), cfg)
    eos = prompts.tokenizer.eos_token
    for record in demos:  # LFM2's chat template: only the actions are trained
        input_ids, labels = tokens_of(record, prompts)
        assert trained_text(prompts.tokenizer, input_ids, labels) == [
            f"{t.action}{eos}" for t in record.turns
        ]
