"""The outcome reward model: what it reads (element labels in the history, the final page cut to
its budget), how it answers (YES against NO), its data split, its training on the answer token,
and its verdicts as a GRPO reward."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.protocol.trajectory import Trajectory
from services.trainer.config import ConfigError, load_config
from services.trainer.discovery import StaticDiscovery
from services.trainer.generation.random_policy import RandomBackend
from services.trainer.generation.scripted import ScriptedBackend
from services.trainer.orm.data import balanced, examples, split_of
from services.trainer.orm.prompt import JudgeInput, JudgePrompt, annotate, from_record
from services.trainer.orm.report import expected_calibration_error, measures
from services.trainer.orm.scorer import OrmScorer
from services.trainer.orm.train import train_orm
from services.trainer.rollout import Episode, EpisodeRequest, Turn
from services.trainer.stack import RolloutStack
from services.trainer.trajectories import TrajectoryWriter
from tests.trainer.test_rewards import advantages, episodes

PAGE = (
    "RootWebArea 'Click Test', focused\n"
    "\t[12] textbox 'Username'\n"
    "\t[13] button 'Submit'\n"
    "\t[14] generic, clickable=True\n"
    "\t\tStaticText 'Tortor'\n"
)


def test_each_action_names_the_element_it_touched_on_the_page_it_was_taken_on():
    assert annotate("click('13')", PAGE) == "click('13')  # button 'Submit'"
    assert annotate("fill('12', 'bob')", PAGE) == "fill('12', 'bob')  # textbox 'Username'"
    assert annotate("click('14')", PAGE) == "click('14')  # generic 'Tortor'"
    assert annotate("click('99')", PAGE) == "click('99')  # no element 99 on the page"
    assert annotate("noop()", PAGE) == "noop()"
    assert annotate("click me", PAGE) == "click me"  # an invalid reply is shown as written


def judged(goal="Click the Submit button.", actions=("click('13')",), page=PAGE) -> JudgeInput:
    return JudgeInput(goal, tuple(annotate(a, PAGE) for a in actions), page)


def test_the_plain_prompt_holds_goal_history_and_final_page_and_cuts_only_the_page(
    tiny_base_model,
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    prompt = JudgePrompt(tokenizer, page_tokens=16)
    assert prompt.format == "plain"
    long_page = PAGE + "".join(f"\t[{i}] link 'Item {i}'\n" for i in range(20, 80))
    text = prompt.text(judged(page=long_page))
    assert "Task: Click the Submit button." in text
    assert "1. click('13')  # button 'Submit'" in text
    assert "(page truncated)" in text and "Item 79" not in text
    assert text.endswith("Answer:")
    ids, mask = prompt.example_ids(judged(), yes=False)
    assert sum(mask) == 1 and mask[-1] == 1 and ids[-1] == prompt.answer_ids[1]
    assert ids[:-1] == prompt.ids(judged())  # what the scorer reads
    assert prompt.ids(judged())[: -len(prompt.lead_ids) or None] == tokenizer.encode(
        prompt.text(judged())
    )


def test_the_chat_prompt_uses_the_template_and_answers_as_the_assistant(tiny_chat_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    prompt = JudgePrompt(tokenizer)
    text = prompt.text(judged())
    assert prompt.format == "chat" and "<|im_start|>assistant" in text
    assert "# button 'Submit'" in text and prompt.answer_ids[0] != prompt.answer_ids[1]


def test_the_score_is_yes_against_no_at_the_answer_position_the_same_in_any_batch(
    tiny_base_model,
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model).eval()
    scorer = OrmScorer(model, tokenizer, batch_size=3)
    items = [judged(actions=("click('13')",) * n) for n in range(1, 6)]  # different lengths
    batched = scorer.scores(items)
    alone = [OrmScorer(model, tokenizer, batch_size=1).scores([item])[0] for item in items]
    assert batched == pytest.approx(alone, abs=1e-5)  # left padding changes nothing
    ids = scorer.prompt.ids(items[0])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    yes, no = (logits[i].item() for i in scorer.prompt.answer_ids)
    assert batched[0] == pytest.approx(1 / (1 + math.exp(no - yes)), abs=1e-5)


def record(task: str, seed: int, actions: list[str], success: bool, policy="p") -> Trajectory:
    return Trajectory(
        task=task, seed=seed, goal="Click the Submit button.", source="evaluation",
        policy=policy, tokenizer="t", prompt_format="plain", max_turns=3, prompt_ids=[1],
        completion_ids=[], env_mask=[], logprobs=[], final_observation=PAGE,
        turns=[{"observation": PAGE, "action": a, "start": 0, "end": 0} for a in actions],
        reward=float(success), outcome="success" if success else "failure",
    )  # fmt: skip


def test_a_page_falls_wholly_on_one_side_and_held_out_tasks_are_test_only():
    records = [
        record("click-button", seed, [action], ok, policy)
        for seed in range(40)
        for policy, action, ok in (("a", "click('13')", True), ("b", "click('12')", False))
    ] + [record("click-link", 1, ["click('14')"], False)]
    duplicate = record("click-button", 0, ["click('13')"], True, policy="c")  # same as a's
    splits = examples([*records, duplicate], ["click-link"], test_share=0.25)
    assert [e.task for e in splits["test_tasks"]] == ["click-link"]
    for split in ("train", "test_seeds"):
        seeds = [e.seed for e in splits[split]]
        assert all(seeds.count(s) == 2 for s in seeds)  # both policies' pages, once each
    assert len(splits["train"]) + len(splits["test_seeds"]) == 80
    assert 0 < len(splits["test_seeds"]) < 40
    assert split_of("click-button", 7, frozenset(), 0.25) == split_of("click-button", 7, {}, 0.25)
    few_yes = splits["train"][:1] + [e for e in splits["train"] if not e.label]
    assert sum(e.label for e in balanced(few_yes)) == sum(not e.label for e in balanced(few_yes))


def test_measures_count_agreement_and_calibration():
    m = measures([True, True, False, False], [0.9, 0.4, 0.6, 0.1])
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.5, 0.5, 0.5)
    assert (m["false_yes"], m["false_no"]) == (1, 1)
    assert expected_calibration_error([True, False], [1.0, 0.0]) == 0.0
    assert expected_calibration_error([False, False], [0.95, 0.95]) == pytest.approx(0.95)


def test_the_report_names_each_judges_errors_by_task():
    from services.trainer.orm.report import render_markdown

    def judge(errors):
        return {"n": 4, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "ece": 0.1,
                "brier": 0.2, "errors_by_task": errors}  # fmt: skip

    report = {"test_tasks": {"majority": judge({"a": {"false_yes": 2, "false_no": 0}}),
                             "ORM": judge({"b": {"false_yes": 0, "false_no": 1}})}}  # fmt: skip
    text = render_markdown(report)
    assert "| test_tasks | a | 2 / 0 | 0 / 0 |" in text
    assert "| test_tasks | b | 0 / 0 | 0 / 1 |" in text


def orm_config(model_dir, tmp_path, **sections):
    return load_config(
        {
            "run": {"output_dir": str(tmp_path / "run")},
            "model": {"source": str(model_dir)},
            "tasks": {"train": ["click-test"]},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}},
            "grpo": {"max_steps": 1},
            "metrics": {"port": None},
            **sections,
        }
    )


def test_a_config_with_both_the_checker_and_the_orm_is_refused(tiny_base_model, tmp_path):
    both = [{"type": "task"}, {"type": "orm", "model": "x"}]
    with pytest.raises(ConfigError, match="both 'task' and 'orm'"):
        orm_config(tiny_base_model, tmp_path, rewards=both)
    with pytest.raises(ConfigError, match="click-tset"):
        orm_config(tiny_base_model, tmp_path, rewards=[{"type": "orm", "model": "x",
                                                        "tasks": ["click-tset"]}])  # fmt: skip


def test_the_random_policy_acts_on_elements_of_the_last_page_and_types_goal_words(
    tiny_base_model,
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    backend = RandomBackend(tokenizer, seed=3, fill_share=0.5)
    prompt = "Task: Example goal\nPage:\n[1] button 'X'\nTask: Enter bob please\nPage:\n" + PAGE
    answers = {backend.answer(prompt) for _ in range(60)}
    assert answers <= {"click('12')", "click('13')", "click('14')"} | {
        f"fill('12', {w!r})" for w in ("Enter", "bob", "please")
    }
    assert any(a.startswith("fill") for a in answers) and "click('13')" in answers
    first, second = (RandomBackend(tokenizer, seed=3, fill_share=0.5) for _ in range(2))
    assert [first.answer(prompt) for _ in range(8)] == [second.answer(prompt) for _ in range(8)]


@pytest.mark.chromium
def test_a_played_episode_keeps_its_final_page_and_its_history_names_the_elements(
    env_pods, tiny_base_model, tmp_path
):
    cfg = orm_config(tiny_base_model, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    stack = RolloutStack(cfg, tokenizer, ScriptedBackend(tokenizer), StaticDiscovery(env_pods))
    try:
        (episode,) = stack.play([EpisodeRequest("enter-text", seed=4)])
        (saved,) = stack.records([episode], "scripted")
    finally:
        stack.close()
    assert episode.success and saved.final_observation == episode.final_observation != ""
    fill, click = from_record(saved).history
    assert fill.startswith("fill(") and "# textbox" in fill
    assert click.startswith("click(") and click.endswith("# button 'Submit'")


def labelled(tmp_path) -> Path:
    """A judge's lesson that disagrees with the checker: YES exactly when click('11') was done."""
    histories = [
        ["click('11')"], ["click('12')", "click('11')"], ["click('11')", "click('10')"],
        ["click('13')"], ["click('12')"], ["noop()", "click('13')"], ["click('10')"], ["noop()"],
    ]  # fmt: skip
    writer = TrajectoryWriter(tmp_path / "labelled")
    writer.add(
        record("click-test", seed, actions, "click('11')" in actions)
        for seed, actions in enumerate(histories * 4)
    )
    writer.flush()
    return tmp_path / "labelled"


def group_with_pages(encode) -> list[Episode]:
    """``test_rewards.episodes`` with the pages and turns the judge reads."""
    group = episodes(encode)
    for episode in group:
        episode.turn_log = [Turn(PAGE, action, 0, 0) for action in episode.actions]
        episode.final_observation = PAGE
    return group


@pytest.mark.slow
def test_a_trained_orm_gives_the_reward_of_a_grpo_step_and_the_checker_stays_elsewhere(
    tiny_base_model, tmp_path
):
    cfg = orm_config(
        tiny_base_model,
        tmp_path,
        lora={"enabled": False},
        orm={"data": [str(labelled(tmp_path))], "test_seed_share": 0.01, "epochs": 30,
             "learning_rate": 3e-3, "micro_batch_size": 8, "gradient_accumulation_steps": 1},
    )  # fmt: skip
    folder = train_orm(cfg)
    scorer = OrmScorer.load(folder)
    yes, no = scorer.scores([judged(actions=("click('12')", "click('11')")), judged()])
    assert yes > 0.9 and no < 0.1  # it learned the lesson, not the checker

    judged_here = [{"type": "orm", "model": str(folder)}]
    clean, sloppy, clicked_11, idle = advantages(tiny_base_model, tmp_path, judged_here,
                                                 group_with_pages)  # fmt: skip
    assert clicked_11 > 0 > clean  # the checker's failure is the judge's only YES
    assert clean == pytest.approx(sloppy) == pytest.approx(idle)
    elsewhere = [{"type": "orm", "model": str(folder), "tasks": ["click-button"]}]
    clean, sloppy, failed, idle = advantages(tiny_base_model, tmp_path, elsewhere,
                                             group_with_pages)  # fmt: skip
    assert clean == pytest.approx(sloppy) and clean > 0 > failed  # click-test: the checker's


def test_the_step_line_shows_the_reward_trained_on_beside_the_checkers_success(capsys):
    from types import SimpleNamespace

    from services.trainer.metrics import TrainerMetrics
    from services.trainer.progress import StepLine, StepStats

    checked = [Episode("click-link", 1, outcome="success", reward=1.0)] * 4
    line = StepLine(lambda: StepStats.of(checked, seconds=2.0), TrainerMetrics())
    state = SimpleNamespace(global_step=1, max_steps=2)
    line.on_log(None, state, None, logs={"loss": 0.1, "reward": 0.25})  # the ORM said NO 3 times
    assert "reward 0.25 | success 1.00" in line.lines[0]
