"""run.report_to: a tracker is checked before anything runs (the GRPO test reads back what the
installed ones wrote: tests/trainer/test_grpo.py)."""

from __future__ import annotations

import os

import pytest

from services.trainer import trackers
from services.trainer.config import ConfigError, load_config

LOCAL_CPU = "services/trainer/configs/local_cpu.yaml"


def _run(tmp_path, report_to):
    overrides = {"run.output_dir": str(tmp_path / "run"), "run.report_to": report_to}
    return load_config(LOCAL_CPU, overrides=overrides).run


def test_a_tracker_that_is_not_installed_is_refused_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(trackers.MODULES, "wandb", "no_such_module_anywhere")
    refused = r"wandb, which is not installed: pip install .*\[wandb\]"
    with pytest.raises(ConfigError, match=refused):
        trackers.report_to(_run(tmp_path, ["tensorboard", "wandb"]))


def test_installed_trackers_pass_through_and_trackio_keeps_its_data_in_the_run(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("TRACKIO_DIR", "")  # recorded, so the value report_to sets is undone
    monkeypatch.delenv("TRACKIO_DIR")
    assert trackers.report_to(_run(tmp_path, [])) == []
    assert trackers.report_to(_run(tmp_path, ["tensorboard", "trackio"])) == [
        "tensorboard",
        "trackio",
    ]
    assert os.environ["TRACKIO_DIR"] == str((tmp_path / "run" / "trackio").resolve())


def test_an_unknown_tracker_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="report_to"):
        _run(tmp_path, ["mlflow"])
