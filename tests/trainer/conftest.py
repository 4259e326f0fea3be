"""Shared fixtures of the trainer tests: real env pods (Chromium) and tiny random models.

Pods are started once per session (two processes, so a test can kill one and watch episodes
move to the other); tiny models are built once (hidden 64, 2 layers, locally trained tokenizer).
"""

from __future__ import annotations

import pytest

from services.trainer.generation.scripted import ScriptedBackend


@pytest.fixture(scope="session")
def env_pods():
    """Two local env pods; yields their base URLs."""
    from services.env.local import start_local_env_pods

    with start_local_env_pods(2, max_sessions=4, ready_timeout_s=300) as urls:
        yield urls


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """Folder of a tiny random Qwen2 with a ChatML template."""
    from services.trainer.models import build_random_model

    return build_random_model("qwen2", tmp_path_factory.mktemp("tiny-chat"), size="tiny")


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory):
    """Folder of a tiny random Qwen2 without a chat template (few-shot prompts)."""
    from services.trainer.models import build_random_model

    return build_random_model(
        "qwen2", tmp_path_factory.mktemp("tiny-base"), size="tiny", chat_template=False
    )


@pytest.fixture
def scripted_backend():
    return ScriptedBackend


def train(cfg, model_dir, discovery):
    """Build and run a GRPO training of the model in ``model_dir`` (closed after); (training,
    final policy folder). ``discovery``: env pod URLs or a Discovery."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.grpo import build_training, run_training

    training = build_training(
        cfg,
        discovery,
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
    )
    try:
        final = run_training(training, cfg)
    finally:
        training.close()
    return training, final
