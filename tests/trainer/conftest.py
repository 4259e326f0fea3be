"""Shared fixtures of the trainer tests: real env pods (Chromium), tiny random models and a
fake OpenAI-compatible generation server.

Pods are started once per session (two processes, so a test can kill one and watch episodes
move to the other); tiny models are built once (hidden 64, 2 layers, locally trained tokenizer).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import Future

import pytest
from aiohttp import web

from services.trainer.generation.scripted import ScriptedBackend

# trackio reads TRACKIO_DIR once, when TRL first imports it: tests write to a scratch database.
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="trackio-tests-"))


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


def played(episodes):
    """A ``RolloutStack.start`` that plays nothing: every rollout is ``episodes``."""

    def start(requests, on_episode=None) -> Future:
        future: Future = Future()
        future.set_result(list(episodes))
        return future

    return start


def remote_lora_config(model_dir, output_dir, servers: list[str], **sections):
    """Three GRPO steps of a LoRA on click-test, generated on ``servers`` (our inference routes)
    and pushed to them after every step; ``sections`` add to the config."""
    from services.trainer.config import load_config

    replicas = {"endpoints": servers}
    return load_config(
        {
            "run": {"output_dir": str(output_dir)},
            "model": {"source": str(model_dir)},
            "tasks": {"train": ["click-test"], "max_turns": 2},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}, "sessions_per_endpoint": 4},
            "generation": {
                "backend": {"type": "remote", "servers": replicas, "model": "policy"},
                "max_new_tokens": 6,
                "batch_wait_ms": 100,
            },
            "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj"]},
            "grpo": {"max_steps": 3, "prompts_per_step": 2, "num_generations": 2},
            "policy_sync": {"enabled": True, "servers": replicas, "wait_ready_s": 30},
            "checkpoint": {"save_steps": 100},
            "metrics": {"port": None},
            **sections,
        }
    )


def train(cfg, model_dir, discovery, callbacks=lambda training: ()):
    """Build and run a GRPO training of the model in ``model_dir`` (closed after); (training,
    final policy folder). ``discovery``: env pod URLs or a Discovery; ``callbacks(training)``:
    TrainerCallbacks to add (they may look at the training being run)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.grpo import build_training, run_training

    training = build_training(
        cfg,
        discovery,
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
    )
    for callback in callbacks(training):
        training.trainer.add_callback(callback)
    try:
        final = run_training(training, cfg)
    finally:
        training.close()
    return training, final


class FakeOpenAI:
    """Echoes the prompt's last ids + 1 as completion; ``mode`` picks the reply form."""

    def __init__(self) -> None:
        self.mode = "token_ids"
        self.requests: list[dict] = []

    async def models(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "Bearer ok") != "Bearer ok":
            return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "policy", "object": "model"}]})

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "error":
            return web.json_response({"error": {"message": "engine dead"}}, status=500)
        if self.mode == "too_long":
            message = "maximum context length is 512 tokens, your prompt contains 922"
            return web.json_response({"error": {"message": message}}, status=400)
        ids = [i + 1 for i in body["prompt"][-3:]]
        logprobs = [-0.1 * (k + 1) for k in range(len(ids))]
        choice = {"index": 0, "text": "click('13')", "finish_reason": "stop"}
        if self.mode == "token_ids":
            choice["token_ids"] = ids
            choice["logprobs"] = {"tokens": ["a"] * len(ids), "token_logprobs": logprobs}
        elif self.mode == "tokens_as_ids":
            tokens = [f"token_id:{i}" for i in ids]
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": logprobs}
        elif self.mode == "text_only":
            choice["logprobs"] = {"tokens": ["cl", "ick"], "token_logprobs": logprobs}
        return web.json_response(
            {"id": "x", "object": "text_completion", "choices": [choice]},
            headers={"x-policy-version": "12"},
        )


@pytest.fixture
async def fake_server():
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/completions", fake.completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()
