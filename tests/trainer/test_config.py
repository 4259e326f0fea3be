"""Bad trainer configs fail at load time, before any model load or env start, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.trainer.cli import main
from services.trainer.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "services/trainer/configs").glob("**/*.yaml"))
MINIMAL = {
    "model": {"source": "pypi:gemma3-270m"},
    "tasks": {"train": ["click-test"]},
    "env": {"local": {"pods": 1}},
    "grpo": {"max_steps": 1},
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    load_config(path)


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {
        "local_cpu.yaml",
        "quick.yaml",
        "lfm2_350m.yaml",
        "lfm2_350m_lora.yaml",
        "lfm2_350m_book_flight.yaml",
        "lfm2_350m_sft_grpo.yaml",
    } <= names


def _with(**changes):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grpo__max_stepz": 3}, r"grpo\.max_stepz: unknown key"),
        ({"surprise": {}}, r"surprise: unknown key"),
        ({"grpo__max_steps": "many"}, r"grpo\.max_steps: .*integer"),
        ({"tasks__train": ["click-tset"]}, r"unknown task\(s\) \['click-tset'\] in family miniwob"),
        ({"tasks__train": []}, r"tasks\.train"),
        ({"eval__tasks": ["nope"]}, r"unknown task\(s\) \['nope'\]"),
        ({"prompt__action_subsets": ["mouse"]}, r"unknown action subset"),
        ({"env__local__pods": 0}, r"no env: set env\.discovery\.endpoints or env\.local\.pods"),
        ({"env__discovery": {"endpoints": ["10.0.0.1:8000"]}}, r"must start with http"),
        ({"grpo__num_generations": 3}, r"not a multiple of micro_batch_size"),
        ({"generation__temperature": 0}, r"generation\.temperature"),
        ({"eval__seed_start": 5}, r"overlap the training seeds"),
        ({"checkpoint__push_to_hub": True}, r"needs checkpoint\.hub_model_id"),
        ({"model__dtype": "bfloat16"}, r"float32 with use_cpu"),
        (
            {"env__local__pod": {"action_subsets": ["bid"]}, "prompt__action_subsets": ["nav"]},
            r"differs from prompt\.action_subsets",
        ),
        ({"env__local__pod": {"max_sesions": 3}}, r"env\.local\.pod\.max_sesions: unknown key"),
        ({"generation__backend": {"type": "tpu"}}, r"generation\.backend: Input tag 'tpu'"),
        ({"rewards": [{"type": "vibes"}]}, r"rewards\.0: Input tag 'vibes'"),
        ({"policy_sync__transprt": "upload"}, r"policy_sync\.transprt: unknown key"),
        ({"replay__min_prob": 0.9, "replay__max_prob": 0.5}, r"replay band: min_prob 0.9 >="),
        ({"demos__source": "teacher"}, r"demos\.source teacher needs demos\.teacher"),
        ({"demos__seed_start": 1_000_010}, r"demonstration seeds .* overlap the eval seeds"),
        (
            {"demos__seed_start": 999_990, "demos__task_episodes": {"click-test": 20}},
            r"demonstration seeds \[999990, 1000010\) overlap the eval seeds",
        ),
        ({"demos__task_episodes": {"click-tst": 5}}, r"click-tst"),
        ({"demos__task_episodes": {"click-test": 0}}, r"task_episodes values must be >= 1"),
        (
            {"sft__enabled": True, "policy_sync__enabled": True},
            r"sft\.enabled with policy_sync\.mode adapter: .* use policy_sync\.mode full",
        ),
    ],
)
def test_bad_config_fails_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_with(**changes))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_cli_rejects_a_bad_config_before_starting_anything(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_with(grpo__beta=-1)))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "grpo.beta" in err and "greater than or equal to 0" in err
    assert not (tmp_path / "runs").exists()


def test_configs_compose_later_wins_and_unknown_keys_still_fail(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump({**MINIMAL, "curriculum": {"type": "learnability", "window": 8}})
    )
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("grpo: {learning_rate: 3.0e-5}\nrun: {max_train_minutes: 5}\n")
    config = load_config(base, overlay)
    assert (config.grpo.max_steps, config.grpo.learning_rate) == (1, 3.0e-5)  # deep merge
    assert config.curriculum.window == 8 and config.run.max_train_minutes == 5

    # `extends:` names the base from inside the overlay; null is a value; {} clears a mapping;
    # another `type` replaces the whole section instead of merging into it.
    base.write_text(
        yaml.safe_dump(
            {
                **MINIMAL,
                "tasks": {"train": ["click-test"], "max_turns_per_task": {"click-test": 2}},
                "curriculum": {"type": "learnability", "window": 8},
            }
        )
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\nrun: {max_train_minutes: null}\ncurriculum: {type: round_robin}\n"
        "tasks: {max_turns_per_task: {}}\n"
    )
    config = load_config(overlay, child)
    assert config.run.max_train_minutes is None
    assert config.tasks.max_turns_per_task == {}
    assert config.curriculum.type == "round_robin" and config.grpo.learning_rate == 3.0e-5

    overlay.write_text("grpo: {learning_rat: 3.0e-5}\n")
    with pytest.raises(ConfigError, match=r"grpo\.learning_rat: unknown key"):
        load_config(base, overlay)
    child.write_text("extends: child.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(child)


def test_environment_overrides_follow_the_one_rule_of_every_service(tmp_path):
    """TRAINER_<SECTION>__<KEY>, values read as YAML, strings kept raw."""
    environ = {
        "TRAINER_GRPO__MAX_STEPS": "7",
        "TRAINER_MODEL__SOURCE": "0123",
        "TRAINER_ENV__DISCOVERY__ENDPOINTS": "[http://a:1, http://b:2]",
        "OTHER_GRPO__MAX_STEPS": "9",
    }
    config = load_config(MINIMAL, environ=environ)
    assert config.grpo.max_steps == 7 and config.model.source == "0123"
    assert config.env.discovery.endpoints == ["http://a:1", "http://b:2"]
    with pytest.raises(ConfigError, match=r"grpo\.max_steps"):
        load_config(MINIMAL, environ={"TRAINER_GRPO__MAX_STEPS": "zero"})


def test_cli_overrides_are_validated_too(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert main(["check", "--config", str(path), "--set", "grpo.max_steps=2"]) == 0
    assert main(["check", "--config", str(path), "--set", "grpo.max_steps=-1"]) == 2
    assert "grpo.max_steps" in capsys.readouterr().err
