"""Env tests run real pods (subprocesses with real Chromium): one shared pod per module."""

from __future__ import annotations

import shutil

import httpx
import pytest

from services.env.config import EnvServerConfig

CHROMIUM = EnvServerConfig().chromium_path


def pytest_collection_modifyitems(items):
    if shutil.which(CHROMIUM):
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing: run `make setup`")
    for item in items:
        if "chromium" in item.keywords:
            item.add_marker(skip)


def _metric_value(base_url: str, name: str, **labels: str) -> float:
    wanted = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    )
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def metric():
    """``metric(base_url, name, **labels)``: one series' value on a pod's /metrics (0 if absent)."""
    return _metric_value
