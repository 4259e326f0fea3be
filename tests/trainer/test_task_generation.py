"""WebRL's self-evolving curriculum: goals written from a failed page's elements, checked on real
pages by the ``gen`` family, the band filter, and a pool that survives a restart."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from transformers import AutoTokenizer

from services.env.client import EnvRequestError
from services.protocol import axtree
from services.protocol.generated import GeneratedTask, GoalCheck, read_pool
from services.trainer.config import ConfigError, TaskGenerationConfig, load_config
from services.trainer.discovery import StaticDiscovery
from services.trainer.generation.base import SamplingParams
from services.trainer.generation.scripted import ScriptedBackend
from services.trainer.rollout import Episode, EpisodeRequest, Turn
from services.trainer.stack import RolloutStack
from services.trainer.task_generation import (
    FailedPage,
    TaskGeneration,
    band_verdict,
    goal_prompt,
    lm_goal,
    programmatic_goals,
)

PAGE = (
    "RootWebArea 'Click Button Task', focused\n"
    "\t[10] textbox 'Name'\n"
    "\t[11] button 'Yes'\n"
    "\t[12] button 'No'\n"
    "\t[13] button 'Yes'\n"  # a label that names two elements: never a goal
    "\t[14] link 'Home'\n"
    "\t[15] checkbox 'red'\n"
    "\t[16] checkbox 'blue'\n"
    "\t[17] checkbox 'green'\n"
    "\t[18] LabelText 'green'\n"  # shares its box's label: another role, no clash
    "\t[19] generic, clickable=True\n"
    "\t\tStaticText 'lacus'\n"
)


def test_goals_come_from_the_pages_own_elements_and_skip_ambiguous_labels():
    failed = FailedPage("click-button", 7, "Click on the Submit button.", PAGE)
    goals = programmatic_goals(failed, per_page=20, rng=random.Random(0), phase=2)
    by_kind = {g.check.kind: g for g in goals}
    assert {g.goal for g in goals if g.check.kind == "click"} == {
        'Click the button "No".',
        'Click the link "Home".',
        'Click on "lacus".',
    }
    assert (
        by_kind["fill"].check.bids == ["10"] and by_kind["fill"].check.value in by_kind["fill"].goal
    )
    assert len(by_kind["check"].check.bids) == 2 and by_kind["check"].goal.startswith("Select")
    assert all(g.base_task == "click-button" and g.seed == 7 and g.phase == 2 for g in goals)
    assert all(g.parent_goal == failed.goal for g in goals)
    again = programmatic_goals(failed, per_page=20, rng=random.Random(0), phase=2)
    assert [g.id for g in again] == [g.id for g in goals]  # same page, same goal: same id
    assert len(programmatic_goals(failed, per_page=2, rng=random.Random(1))) == 2


def test_the_band_keeps_goals_the_policy_solves_sometimes():
    band = (0.05, 0.75)
    assert band_verdict(0, 4, band) == "too_hard"
    assert band_verdict(1, 4, band) == band_verdict(3, 4, band) == "kept"
    assert band_verdict(4, 4, band) == "too_easy"
    assert band_verdict(0, 0, band) == "broken"  # every probe dropped: the page failed


def failed_episode(task: str, seed: int) -> Episode:
    return Episode(task, seed, outcome="failure", goal="Click on No.",
                   turn_log=[Turn(PAGE, "click('11')", 0, 0)])  # fmt: skip


class FakePods:
    """Plays probe requests like pods would: only tasks ``serve``d first (a reset carries its
    task); of a task's probes, the first ``successes_by_kind[kind]`` succeed; a fill goal's page
    is broken (every episode dropped)."""

    def __init__(self, successes_by_kind: dict[str, int]) -> None:
        self.successes_by_kind = successes_by_kind
        self.served: dict[str, GeneratedTask] = {}
        self.seen: Counter[str] = Counter()

    def serve(self, tasks) -> None:
        self.served.update((t.name, t) for t in tasks)

    def play(self, requests: list[EpisodeRequest]) -> list[Episode]:
        out = []
        for request in requests:
            self.seen[request.task] += 1
            check = self.served[request.task].check
            kind = check.kind if check else "none"
            if kind == "fill":
                out.append(Episode(request.task, request.seed, outcome="dropped"))
                continue
            ok = self.seen[request.task] <= self.successes_by_kind.get(kind, 0)
            out.append(Episode(request.task, request.seed, outcome="success" if ok else "failure"))
        return out


def generation(tmp_path, pods: FakePods, added: list[str], **overrides) -> TaskGeneration:
    config = load_config(
        {
            "model": {"source": "unused"},
            "tasks": {"train": ["click-button"]},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}},
            "grpo": {"max_steps": 8, "phase_steps": 2},
            "metrics": {"port": None},
            "task_generation": {"enabled": True, "goals_per_page": 5, "max_candidates": 10,
                                **overrides},
        }
    ).task_generation  # fmt: skip
    return TaskGeneration(config, tmp_path / "task_pool", pods.play, pods.serve, added.extend)


def test_a_phase_boundary_probes_new_goals_keeps_the_band_and_a_restart_resumes_the_pool(
    tmp_path,
):
    pods = FakePods({"click": 2, "check": 4})
    added: list[str] = []
    gen = generation(tmp_path, pods, added)
    gen.phase_started()  # the first phase starts: nothing played yet
    assert gen.history == [] and not gen.pool_file.exists()
    gen.observe([failed_episode("click-button", 3), Episode("click-button", 4, outcome="success")])
    gen.phase_started()
    (record,) = gen.history
    assert record["phase"] == 1 and record["failed_pages"] == 1
    assert record["original_success"] == 0.5 and record["generated_episodes"] == 0
    assert record["generated"] == 5  # 3 clicks, a fill, a tick
    assert record["kept"] == 3 and record["too_easy"] == 1 and record["broken"] == 1
    counts = {"kept": 3, "too_easy": 1, "too_hard": 0, "broken": 1}
    assert record["by_generator"] == {"programmatic": counts}
    assert {d["fate"] for d in record["dropped"]} == {"too_easy", "broken"}
    assert {t.check.kind for t in gen.pool} == {"click"} and [t.name for t in gen.pool] == added
    assert record["pool"] == 3
    assert record["examples"][0]["page"] == "click-button seed 3"

    gen.observe([Episode(gen.pool[0].name, 0, outcome="success")])
    gen.finish()  # training ends in phase 2: its success is kept apart from the boundaries
    state = json.loads((tmp_path / "task_pool" / "state.json").read_text())
    assert state["last_phase"]["phase"] == 2 and state["last_phase"]["generated_success"] == 1.0

    resumed_into: list[str] = []
    restarted = FakePods({})
    resumed = generation(tmp_path, restarted, resumed_into)
    assert resumed_into == added and resumed.phase == 1 and resumed.history == gen.history
    assert sorted(restarted.served) == sorted(added)  # the pool's tasks playable again


def test_task_generation_needs_phases_and_pods_that_play_generated_tasks():
    base = {
        "model": {"source": "unused"},
        "tasks": {"train": ["click-button"]},
        "env": {"discovery": {"endpoints": ["http://unused:1"]}},
        "metrics": {"port": None},
        "task_generation": {"enabled": True},
    }
    with pytest.raises(ConfigError, match="needs phases"):
        load_config({**base, "grpo": {"max_steps": 4}})
    with pytest.raises(ConfigError, match="band"):
        load_config({**base, "grpo": {"max_steps": 4, "phase_steps": 2},
                     "task_generation": {"enabled": True, "band": [0.8, 0.2]}})  # fmt: skip
    pods = {"local": {"pods": 1, "pod": {"task_families": [{"type": "miniwob"}]}}}
    with pytest.raises(ConfigError, match=r"task_families has no \{type: generated\}"):
        load_config({**base, "grpo": {"max_steps": 4, "phase_steps": 2}, "env": pods})


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    """One env pod with its default families: MiniWoB and the generated tasks resets carry."""
    from services.env.local import start_local_env_pods

    with start_local_env_pods(
        1, max_sessions=4, ready_timeout_s=300, action_subsets=["miniwob_liu18"]
    ) as urls:
        yield urls


def play(
    cfg, tokenizer, urls, requests, replies=None, demonstrate=False, served=()
) -> list[Episode]:
    backend = ScriptedBackend(tokenizer, list(replies or []))
    stack = RolloutStack(cfg, tokenizer, backend, StaticDiscovery(urls), demonstrate=demonstrate)
    stack.serve(served)
    try:
        return stack.play(requests)
    finally:
        stack.close()


@pytest.mark.chromium
def test_generated_goals_are_checked_on_the_real_page(pods, tiny_base_model, tmp_path):
    urls = pods
    cfg = load_config(
        {
            "model": {"source": str(tiny_base_model)},
            "tasks": {"train": ["click-checkboxes"], "max_turns": 4},
            "env": {"discovery": {"endpoints": urls}},
            "prompt": {"action_subsets": ["miniwob_liu18"]},
            "grpo": {"max_steps": 1},
            "metrics": {"port": None},
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    (seen,) = play(cfg, tokenizer, urls, [EpisodeRequest("click-checkboxes", 5)], ["noop()"])
    failed = FailedPage("click-checkboxes", 5, seen.goal, seen.turn_log[0].observation)
    goals = programmatic_goals(failed, per_page=50, rng=random.Random(0))
    click = next(g for g in goals if g.check.kind == "click")
    ticks = next(g for g in goals if g.check.kind == "check")
    wrong = click.model_copy(update={"id": "wrong-click"})
    broken = GeneratedTask(
        id="broken",
        base_task="click-checkboxes",
        seed=5,
        goal="Click it.",
        check=GoalCheck(kind="click", bids=["9999"]),
        generator="programmatic",
    )
    free = GeneratedTask(
        id="lm-free",
        base_task="click-checkboxes",
        seed=5,
        goal="Tick all.",
        check=None,
        generator="lm",
    )
    sent = [click, ticks, wrong, broken, free]  # each reset carries its task to the pod
    other = next(
        e.bid
        for e in axtree.elements(failed.page)
        if e.role == "checkbox" and e.bid != click.check.bids[0]
    )

    def one(task: GeneratedTask, replies=(), demonstrate=False) -> Episode:
        request = [EpisodeRequest(task.name, 0)]
        return play(cfg, tokenizer, urls, request, replies, demonstrate, served=sent)[0]

    solved, demonstrated, missed, dropped = (
        one(click, click.check.solution()),
        one(ticks, demonstrate=True),
        one(wrong, [f"click('{other}')"]),
        one(broken, ["noop()"]),
    )
    assert solved.success and solved.reward == 1.0 and solved.goal == click.goal
    assert demonstrated.success and demonstrated.turns == len(ticks.check.bids)  # a click a box
    assert missed.outcome == "failure" and missed.reward == 0.0 and missed.turns == 1
    assert dropped.dropped and "not on the page" in dropped.drop_reason
    unchecked = one(free, ["noop()"] * 4)
    assert unchecked.outcome == "truncated" and unchecked.turns == 4  # no check: the ORM judges
    with pytest.raises(EnvRequestError, match=r"UNKNOWN_TASK: .* must carry it \(options.gen"):
        play(cfg, tokenizer, urls, [EpisodeRequest("gen.never-sent", 0)], ["noop()"])

    writer = RolloutStack(cfg, tokenizer, ScriptedBackend(tokenizer, ["Tick red."]),
                          StaticDiscovery(urls))  # fmt: skip
    try:  # the lm generator's path: plain completions from the policy's backend
        assert writer.complete(["Write a goal:"], SamplingParams()) == ["Tick red."]
    finally:
        writer.close()


@pytest.mark.chromium
@pytest.mark.slow
def test_grpo_generates_tasks_at_phase_boundaries_and_trains_on_them(tiny_base_model, tmp_path):
    from services.env.local import start_local_env_pods
    from tests.trainer.conftest import train

    cfg = load_config(
        {
            "run": {"output_dir": str(tmp_path / "run")},
            "model": {"source": str(tiny_base_model)},
            "tasks": {"train": ["click-button"], "max_turns": 2},
            "curriculum": {"type": "learnability"},
            "env": {"discovery": {"endpoints": ["http://unused:1"]}},
            "prompt": {"action_subsets": ["miniwob_liu18"]},
            "generation": {"max_new_tokens": 6, "temperature": 1.0, "batch_wait_ms": 100},
            "lora": {"enabled": False},
            "grpo": {"max_steps": 3, "phase_steps": 1, "prompts_per_step": 2,
                     "num_generations": 2, "micro_batch_size": 2},
            "task_generation": {"enabled": True, "max_candidates": 3, "probe_episodes": 2,
                                "band": [0.0, 1.0]},  # keep whatever could be played
            "checkpoint": {"save_steps": 100},
            "metrics": {"port": None},
        }
    )  # fmt: skip
    # The pod's default families, as on a cluster: it shares nothing with the trainer.
    with start_local_env_pods(1, max_sessions=4, action_subsets=["miniwob_liu18"]) as urls:
        training, _ = train(cfg, tiny_base_model, urls)
    history = json.loads((tmp_path / "run/task_pool/state.json").read_text())["phases"]
    assert [p["phase"] for p in history] == [1, 2]  # boundaries after steps 1 and 2
    last = json.loads((tmp_path / "run/task_pool/state.json").read_text())["last_phase"]
    assert last["phase"] == 3 and last["original_episodes"] + last["generated_episodes"] == 4
    first = history[0]
    assert first["generated"] == 3 and first["kept"] + first["broken"] == 3
    pool = read_pool(tmp_path / "run/task_pool/pool.jsonl")
    assert len(pool) == first["kept"] + history[1]["kept"] > 0
    registry = training.metrics.registry
    assert registry.get_sample_value("trainer_task_pool_size") == len(pool)
    labels = {"generator": "programmatic", "fate": "kept"}
    assert registry.get_sample_value("trainer_generated_tasks_total", labels) == len(pool)
    assert history[1]["generated_episodes"] > 0  # step 2's curriculum drew generated tasks
    assert all(t.name in training.rollout.curriculum.weights() for t in pool)


def test_a_models_goal_is_its_first_line_and_never_the_failed_goal_again():
    failed = FailedPage("click-button", 7, "Click on the Submit button.", PAGE)
    prompt = goal_prompt(failed)
    assert "Failed task: Click on the Submit button." in prompt and "[12] button 'No'" in prompt
    task = lm_goal(failed, ' "Type apple into the Name field."\nand more', phase=3)
    assert task.goal == "Type apple into the Name field." and task.check is None
    assert task.id.startswith("lm-click-button-7-") and task.name.startswith("gen.lm-")
    assert (task.generator, task.phase, task.parent_goal) == ("lm", 3, failed.goal)
    assert lm_goal(failed, "click on the submit button.", 0) is None  # the failed goal again
    assert lm_goal(failed, "Click on the 'Submit'  button", 0) is None  # restated, other quotes
    assert lm_goal(failed, "\n  ok\n", 0) is None  # too short to be a goal


def test_lm_goals_are_probed_with_the_judge_and_kept_in_the_band(tmp_path):
    pods = FakePods({"click": 0, "check": 0})
    written: list[list[str]] = []

    def write(prompts: list[str]) -> list[str]:
        written.append(prompts)
        return [f"Type hello {i} into the Name field." for i in range(len(prompts))]

    def judge(episodes: list[Episode]) -> list[bool]:  # half of each probe judged a success
        return [i % 2 == 0 for i in range(len(episodes))]

    config = TaskGenerationConfig(enabled=True, generators=["lm"], max_candidates=2)
    gen = TaskGeneration(config, tmp_path / "task_pool", pods.play, pods.serve, [].extend,
                         write=write, judge=judge)  # fmt: skip
    gen.observe([failed_episode("click-button", 3), failed_episode("click-link", 4)])
    gen.phase_started()
    (record,) = gen.history
    assert len(written[0]) == 2 and record["generated"] == 2 and record["kept"] == 2
    assert record["by_generator"] == {"lm": {"kept": 2, "too_easy": 0, "too_hard": 0, "broken": 0}}
    assert all(t.generator == "lm" and t.check is None for t in gen.pool)


def test_lm_goals_need_a_judge_and_an_orm_reward_for_them():
    base = {
        "model": {"source": "unused"},
        "tasks": {"train": ["click-button"]},
        "env": {"discovery": {"endpoints": ["http://unused:1"]}},
        "metrics": {"port": None},
        "grpo": {"max_steps": 4, "phase_steps": 2},
    }
    lm = {"enabled": True, "generators": ["programmatic", "lm"], "judge": "runs/orm/model"}
    with pytest.raises(ConfigError, match="without a check"):
        load_config({**base, "task_generation": lm})
    judged = [{"type": "orm", "model": "runs/orm/model", "tasks": ["gen.lm-*"]}]
    cfg = load_config({**base, "task_generation": lm, "rewards": judged})
    assert cfg.rewards[0].tasks == ["gen.lm-*"]
    from services.trainer.orm.reward import OrmReward

    reward = OrmReward(scorer=None, tasks=["gen.lm-*"])
    assert reward.judged("gen.lm-click-button-3-ab12cd34") and not reward.judged("click-button")
