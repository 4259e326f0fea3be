"""Shared fixtures of the trainer tests: real env pods (Chromium) and tiny random models.

Pods are started once per session (two processes, so a test can kill one and watch episodes
move to the other); tiny models are built once (hidden 64, 2 layers, locally trained tokenizer).
"""

from __future__ import annotations

import re

import pytest

from services.trainer.generation.base import Generation, SamplingParams


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


class ScriptedBackend:
    """A policy that reads the page and answers like a perfect agent (or with ``replies``).

    It returns token ids of its answer with a known logprob per token (-0.25 × position), so
    tests can check that exactly these ids and logprobs reach the training batch.
    """

    def __init__(self, tokenizer, replies: list[str] | None = None, suffix: str = "") -> None:
        self.tokenizer = tokenizer
        self.replies = list(replies or [])
        self.suffix = suffix
        self.calls: list[list[list[int]]] = []
        self.outputs: list[Generation] = []

    def answer(self, prompt_text: str) -> str:
        if self.replies:
            return self.replies.pop(0)
        page = prompt_text.rsplit("Page", 1)[-1]
        textbox = re.search(r"\[(\w+)\] textbox ''", page)
        goal = re.findall(r'Enter "([^"]+)"', prompt_text)
        if textbox and goal:
            return f"fill('{textbox.group(1)}', '{goal[-1]}')"
        button = re.findall(r"\[(\w+)\] button", page)
        return f"click('{button[-1]}')" if button else "noop()"

    async def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        self.calls.append(prompts)
        out = []
        for ids in prompts:
            text = self.answer(self.tokenizer.decode(ids)) + self.suffix
            token_ids = self.tokenizer.encode(text, add_special_tokens=False)
            logprobs = [-0.25 * (i + 1) for i in range(len(token_ids))]
            out.append(Generation(token_ids, logprobs, text, policy_version=7))
        self.outputs.extend(out)
        return out

    async def close(self) -> None:
        return None


@pytest.fixture
def scripted_backend():
    return ScriptedBackend
