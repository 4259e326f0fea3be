"""The SFT warm-up's data: demonstrations played through the rollout stack, re-rendered exactly,
and trained only on the policy's own action tokens, for chat and few-shot models alike."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from services.trainer.config import load_config
from services.trainer.discovery import StaticDiscovery
from services.trainer.prompts import PromptBuilder
from services.trainer.rollout import EpisodeRequest
from services.trainer.sft import IGNORE, tokens_of
from services.trainer.stack import RolloutStack

TASKS = ("enter-text", "login-user", "click-button")


def _config(model, env_pods):
    return load_config(
        {
            "model": {"source": str(model)},
            "tasks": {"train": list(TASKS), "max_turns": 4},
            "env": {"discovery": {"endpoints": env_pods}},
            "prompt": {"action_subsets": ["miniwob_liu18"]},
            "grpo": {"max_steps": 1},
            "metrics": {"port": None},
        }
    )


def demonstrations(model, env_pods):
    """Scripted demonstrations of every task (two seeds), as trajectory records."""
    cfg = _config(model, env_pods)
    tokenizer = AutoTokenizer.from_pretrained(model)
    stack = RolloutStack(cfg, tokenizer, None, StaticDiscovery(env_pods), demonstrate=True)
    try:
        episodes = stack.play([EpisodeRequest(t, seed=s) for t in TASKS for s in (7, 8)])
        return stack.records(episodes, "scripted"), stack.prompts
    finally:
        stack.close()


def trained_text(tokenizer, input_ids, labels) -> str:
    """The trained positions, decoded in runs (one run per action)."""
    runs, run = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs + ([tokenizer.decode(run)] if run else [])


@pytest.mark.chromium
@pytest.mark.parametrize("model", ["tiny_chat_model", "tiny_base_model"])
def test_demonstrations_train_only_their_actions_and_render_exactly(model, env_pods, request):
    records, prompts = demonstrations(request.getfixturevalue(model), env_pods)
    assert len(records) == 6 and all(r.success and r.source == "scripted" for r in records)
    for record in records:
        # The student's prompt builder re-renders a recorded episode token for token.
        turns = [(t.observation, t.action, t.error) for t in record.turns]
        rendered = prompts.render_episode(record.goal, turns, record.max_turns)
        assert rendered == (record.prompt_ids, record.completion_ids, record.env_mask)

        input_ids, labels = tokens_of(record, prompts)
        assert input_ids == record.prompt_ids + record.completion_ids
        runs = trained_text(prompts.tokenizer, input_ids, labels)
        actions = [t.action for t in record.turns]
        if prompts.format == "fewshot":  # one line after "Action:", ended by the newline
            assert runs == [f" {a}\n" for a in actions]
        else:  # the assistant's text, then its end-of-sequence token
            eos = prompts.tokenizer.eos_token
            assert runs == [f"{a}{eos}" for a in actions]


@pytest.mark.chromium
@pytest.mark.parametrize("fmt", ["fewshot", "plain"])
def test_a_teachers_trajectories_are_rendered_for_the_student(
    env_pods, tiny_chat_model, tiny_base_model, fmt
):
    """Records in another tokenizer and format (a teacher's) train the student on its own
    token sequence: its prompts, its reply format, the same actions."""
    records, _ = demonstrations(tiny_chat_model, env_pods)
    student = PromptBuilder(
        AutoTokenizer.from_pretrained(tiny_base_model), fmt=fmt, action_subsets=["miniwob_liu18"]
    )
    for record in records:
        input_ids, labels = tokens_of(record.model_copy(update={"tokenizer": "teacher"}), student)
        runs = trained_text(student.tokenizer, input_ids, labels)
        assert runs == [f" {t.action}\n" for t in record.turns]
        text = student.tokenizer.decode(input_ids)
        assert text.count("Action:") >= len(record.turns)
        assert ("fill('11', 'Paris')" in text) == (fmt == "fewshot")  # worked examples or none


@pytest.mark.chromium
@pytest.mark.parametrize("source", ["rejection", "teacher"])
async def test_a_served_model_writes_demonstrations_kept_only_when_they_succeed(
    source, env_pods, tiny_chat_model, tiny_base_model, fake_server, tmp_path
):
    """Rejection sampling and a teacher both play through an OpenAI-compatible server (the role
    vLLM plays); the fake one always answers click('13'), which solves click-test only. The
    policy's own records keep the server's token ids; a teacher's carry its tokenizer and prompt
    format, and the student re-renders them."""
    import asyncio

    from services.trainer.demos import generate_demos
    from services.trainer.envs import env_pods as env_pods_of
    from services.trainer.trajectories import read_trajectories

    fake, url = fake_server
    cfg = load_config(
        {
            "run": {"output_dir": str(tmp_path)},
            "model": {"source": str(tiny_chat_model)},
            "tasks": {"train": ["click-test", "click-button"], "max_turns": 2},
            "env": {"discovery": {"endpoints": env_pods}},
            "generation": {
                "backend": {"type": "remote", "servers": {"endpoints": [url]}, "model": "policy"}
            },
            "demos": {
                "source": source,
                "episodes_per_task": 2,
                "teacher": str(tiny_base_model) if source == "teacher" else None,
            },
            "grpo": {"max_steps": 1},
            "metrics": {"port": None},
        }
    )

    def play():
        with env_pods_of(cfg) as pods:
            return generate_demos(cfg, pods)

    folder = await asyncio.to_thread(play)
    records = list(read_trajectories([folder]))
    assert folder == tmp_path / "demos" / source
    assert {r.task for r in records} == {"click-test"} and len(records) == 2
    assert all(r.success and r.source == source for r in records)
    assert all(q["temperature"] == 0.7 for q in fake.requests)  # demos.temperature
    student = PromptBuilder(AutoTokenizer.from_pretrained(tiny_chat_model), fmt="chat")
    input_ids, labels = tokens_of(records[0], student)
    if source == "rejection":  # the student's own tokens, exactly as the server returned them
        assert records[0].tokenizer == str(tiny_chat_model)
        assert input_ids == records[0].prompt_ids + records[0].completion_ids
        return
    assert (records[0].tokenizer, records[0].prompt_format) == (str(tiny_base_model), "fewshot")
    eos = student.tokenizer.eos_token
    assert trained_text(student.tokenizer, input_ids, labels) == [f"click('13'){eos}"]
