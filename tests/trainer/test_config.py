"""Bad trainer configs fail at load time, before any model load or env start, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.trainer.cli import main
from services.trainer.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "services/trainer/configs").glob("*.yaml"))
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
        ({"tasks__train": ["click-tset"]}, r"unknown MiniWoB task\(s\) \['click-tset'\]"),
        ({"tasks__train": []}, r"tasks\.train"),
        ({"eval__tasks": ["nope"]}, r"unknown MiniWoB task"),
        ({"prompt__action_subsets": ["mouse"]}, r"unknown action subset"),
        ({"env__local__pods": 0}, r"no env: set env\.endpoints or env\.local\.pods"),
        ({"env__endpoints": ["10.0.0.1:8000"]}, r"must start with http"),
        ({"grpo__num_generations": 3}, r"not a multiple of micro_batch_size"),
        ({"generation__temperature": 0}, r"generation\.temperature"),
        ({"eval__seed_start": 5}, r"overlap the training seeds"),
        ({"checkpoint__push_to_hub": True}, r"needs checkpoint\.hub_model_id"),
        ({"model__dtype": "bfloat16"}, r"float32 with use_cpu"),
        (
            {"env__local__extra": {"action_subsets": ["bid"]}, "prompt__action_subsets": ["nav"]},
            r"differs from prompt\.action_subsets",
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


def test_cli_overrides_are_validated_too(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert main(["check", "--config", str(path), "--set", "grpo.max_steps=2"]) == 0
    assert main(["check", "--config", str(path), "--set", "grpo.max_steps=0"]) == 2
    assert "grpo.max_steps" in capsys.readouterr().err
