"""Dashboards and alerts against the real thing: promtool checks and unit-tests the chart's alert
rules; every metric a dashboard panel or an alert uses is exported by a service; a real
Prometheus server scraping the local stack (`make up`'s code) shows the series arriving, loads the
alert rules and evaluates every dashboard query.

Where each metric name is checked:
- env (`browserenv_*`, `process_*`): scraped from a REAL env pod after it played an episode;
- trainer (`trainer_*`): the registry of the trainer's own exporter (services/trainer/metrics.py),
  served over HTTP and scraped by Prometheus below; the training process itself is not started
  here (a GRPO run is too heavy for this test; tests/trainer cover it);
- inference (`inference_*`): services/inference/metrics.py's registry;
- vLLM (`vllm:*`): the names vLLM's own code registers (vllm/v1/metrics/loggers.py in the vLLM
  virtualenv); no vLLM server is started here (tests/inference do that).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from scripts import grafana_dashboard
from scripts.local_stack import NAMESPACE, alert_rules, query, run_prometheus
from services.env.client import BrowserEnvClient, EnvRequestError
from services.env.families.miniwob.oracle import solve
from tests.deploy.chartlib import manifests, render, values_for

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DASHBOARD = ROOT / "helm/browser-rl/files/dashboards/browser-rl.json"
VLLM_LOGGERS = next(
    iter(sorted(ROOT.glob(".venv-vllm/lib/python3*/site-packages/vllm/v1/metrics/loggers.py"))),
    None,
)
METRIC = re.compile(r"\b((?:browserenv|trainer|inference|process)_[a-z0-9_]+|vllm:[a-z0-9_:]+)")

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool missing: run `make setup` (Debian prometheus)"
)


def rule_groups(value_set: str = "default") -> dict:
    for doc in manifests(render(values_for(value_set))):
        if doc["kind"] == "PrometheusRule":
            return doc["spec"]
    raise AssertionError("no PrometheusRule rendered")


def alert_expressions() -> list[str]:
    return [r["expr"] for g in rule_groups()["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    return grafana_dashboard.expressions(json.loads(DASHBOARD.read_text()))


def sample_names(family_name: str, family_type: str) -> set[str]:
    """Names a scrape shows for one metric family (prometheus_client strips `_total`)."""
    if family_type == "counter":
        return {family_name.removesuffix("_total") + "_total"}
    if family_type == "histogram":
        return {f"{family_name}_bucket", f"{family_name}_sum", f"{family_name}_count"}
    return {family_name}


def scraped_names(text: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def trainer_names() -> set[str]:
    """The trainer's series, with those of the inference replicas it generates on."""
    from services.trainer.metrics import TrainerMetrics
    from services.trainer.replicas import ReplicaSet

    metrics = TrainerMetrics()
    metrics.watch_replicas(ReplicaSet(["http://replica-0"], target=1))
    return {n for f in metrics.registry.collect() for n in sample_names(f.name, f.type)}


def inference_names() -> set[str]:
    import services.inference.metrics  # noqa: F401  (registers its series)

    return {
        n
        for f in REGISTRY.collect()
        if f.name.startswith("inference_")
        for n in sample_names(f.name, f.type)
    }


def vllm_names() -> set[str]:
    source = VLLM_LOGGERS.read_text()
    found = re.findall(r'_(gauge|counter|histogram)_cls\(\s*name="(vllm:[a-z0-9_:]+)"', source)
    return {n for kind, name in found for n in sample_names(name, kind)}


@pytest.fixture(scope="module")
def env_pod(env_pods):
    return env_pods.b  # stays up and ready through the discovery test


async def play_click_test(url: str, seed: int, max_turns: int = 5) -> float:
    """The scripted policy; it clicks again when a loaded machine timed the click out."""
    async with BrowserEnvClient(url) as env:
        observation = await env.reset(task="click-test", seed=seed)
        for _turn in range(max_turns):
            for action in solve(observation):
                observation = await env.step(action)
            if observation.done:
                break
        return float(observation.reward or 0.0)


async def provoke_error(url: str) -> None:
    async with BrowserEnvClient(url) as env:
        with pytest.raises(EnvRequestError):
            await env.reset(task="no-such-task")


# --- alerts --------------------------------------------------------------------------------


def test_the_staleness_alert_allows_for_the_lag_the_trainer_runs_ahead_by():
    def threshold(values: dict) -> float:
        spec = next(d["spec"] for d in manifests(render(values)) if d["kind"] == "PrometheusRule")
        rules = [r for g in spec["groups"] for r in g["rules"]]
        return float(next(r for r in rules if r.get("alert") == "TrainerPolicyStale")["expr"]
                     .rsplit(">", 1)[1])  # fmt: skip

    assert threshold({}) == 4
    assert threshold({"trainer": {"config": {"rollout": {"max_staleness": 2}}}}) == 6


@needs_promtool
@pytest.mark.parametrize("value_set", ["default", "full", "cpu"])
def test_alert_rules_pass_promtool_check(value_set, tmp_path):
    path = tmp_path / "rules.yaml"
    groups = rule_groups(value_set)
    path.write_text(yaml.safe_dump(groups))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in groups["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def series(name: str, values: str, **labels: str) -> dict:
    labels = {"namespace": "browser-rl", **labels}
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


NS_LABEL = {"namespace": "browser-rl"}
ALERT_CASES = [
    # (alert, input series, evaluation time, fires?, labels the expression keeps)
    (
        "BrowserEnvSaturated",
        [
            series("browserenv_sessions_active", "4x30", pod="env-0"),
            series("browserenv_sessions_capacity", "4x30", pod="env-0"),
        ],
        "15m",
        True,
        {},
    ),
    (
        "BrowserEnvSaturated",
        [
            series("browserenv_sessions_active", "2x30", pod="env-0"),
            series("browserenv_sessions_capacity", "4x30", pod="env-0"),
        ],
        "15m",
        False,
        {},
    ),
    (
        "BrowserEnvEpisodeErrorRate",
        [
            series("browserenv_episodes_total", "0+10x30", task="click-test", outcome="success"),
            series("browserenv_episodes_total", "0+5x30", task="click-test", outcome="abandoned"),
        ],
        "25m",
        True,
        {},
    ),
    (
        "BrowserEnvEpisodeErrorRate",  # turn-capped episodes end truncated: not an error
        [
            series("browserenv_episodes_total", "0+10x30", task="click-test", outcome="success"),
            series("browserenv_episodes_total", "0+20x30", task="click-test", outcome="truncated"),
            series("browserenv_episodes_total", "0+0x30", task="click-test", outcome="abandoned"),
        ],
        "25m",
        False,
        {},
    ),
    (
        "TrainerStalled",  # training, and no step for 30 minutes
        [series("trainer_global_step", "7x40"), series("trainer_training", "1x40")],
        "30m",
        True,
        NS_LABEL,
    ),
    (
        "TrainerStalled",
        [series("trainer_global_step", "0+1x40"), series("trainer_training", "1x40")],
        "30m",
        False,
        NS_LABEL,
    ),
    (
        "TrainerStalled",  # the final evaluation: no steps, but not training either
        [series("trainer_global_step", "7x40"), series("trainer_training", "1x5 0x35")],
        "30m",
        False,
        NS_LABEL,
    ),
    (
        "TrainerStalled",  # loading the model, then a first step slower than the threshold
        [series("trainer_global_step", "0x40"), series("trainer_training", "0x10 1x30")],
        "20m",
        False,
        NS_LABEL,
    ),
    (
        "TrainerDown",  # an active trainer Job, nothing scraped
        [series("kube_job_status_active", "1x30", job_name="rl-browser-rl-trainer-0a1b2c3d")],
        "25m",
        True,
        {},
    ),
    (
        "TrainerDown",  # the Job completed: silence, not an alert forever
        [series("kube_job_status_active", "0x30", job_name="rl-browser-rl-trainer-0a1b2c3d")],
        "25m",
        False,
        {},
    ),
    (
        "TrainerDown",  # running and scraped
        [
            series("kube_job_status_active", "1x30", job_name="rl-browser-rl-trainer-0a1b2c3d"),
            series("trainer_global_step", "0+1x30"),
        ],
        "25m",
        False,
        {},
    ),
    (
        "TrainerRewardCollapse",
        [series("trainer_reward_mean", "0.8x60 0.1x60", task="click-test")],
        "110m",
        True,
        {},
    ),
    (
        "TrainerRewardCollapse",
        [series("trainer_reward_mean", "0.8x120", task="click-test")],
        "110m",
        False,
        {},
    ),
    ("VLLMQueueBacklog", [series("vllm:num_requests_waiting", "100x30")], "15m", True, {}),
    ("VLLMKVCacheFull", [series("vllm:kv_cache_usage_perc", "0.99x30")], "15m", True, {}),
    ("VLLMKVCacheFull", [series("vllm:kv_cache_usage_perc", "0.5x30")], "15m", False, {}),
]


@needs_promtool
@pytest.mark.parametrize(
    ("alert", "inputs", "at", "fires", "kept"),
    ALERT_CASES,
    ids=[f"{c[0]}-{'fires' if c[3] else 'quiet'}-{i}" for i, c in enumerate(ALERT_CASES)],
)
def test_alerts_fire_on_their_condition_and_only_then(alert, inputs, at, fires, kept, tmp_path):
    """`promtool test rules`: synthetic series (one sample a minute) through the real rules."""
    groups = rule_groups()
    for group in groups["groups"]:  # their templates are checked by promtool check rules
        for r in group["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    rule = next(r for g in groups["groups"] for r in g["rules"] if r["alert"] == alert)
    expected = [{"exp_labels": {**rule["labels"], **kept}}] if fires else []
    case = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(case))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- dashboard -----------------------------------------------------------------------------


def test_dashboard_json_is_built_from_code():
    assert DASHBOARD.read_text() == grafana_dashboard.render(), "run `make dashboards`"


def test_dashboard_has_the_panels_people_need():
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    for wanted in [
        "Sessions in use vs capacity",
        "Episodes/s by outcome",
        "Step and reset latency",
        "Errors and browser restarts",
        "Env success rate by task",
        "Reward mean by task",
        "Success rate by task",
        "Loss, KL, grad norm",
        "Step time: rollout, wait, update, generation idle",
        "Policy staleness",
        "Generated tokens/s and episodes/s",
        "vLLM requests running / waiting",
        "vLLM KV cache usage",
        "Time to first token",
        "vLLM tokens/s",
    ]:
        assert wanted in titles


# --- every metric used is exported ---------------------------------------------------------


@pytest.mark.chromium
async def test_every_metric_in_dashboard_and_alerts_is_exported(env_pod):
    assert await play_click_test(env_pod, seed=1) == 1.0
    await provoke_error(env_pod)
    exported = scraped_names(httpx.get(f"{env_pod}/metrics").text)
    exported |= trainer_names() | inference_names()
    used = {
        m for expr in dashboard_expressions() + alert_expressions() for m in METRIC.findall(expr)
    }
    assert used, "no metric found in the dashboard/alerts"
    unchecked = set()
    if VLLM_LOGGERS is not None:
        exported |= vllm_names()
    else:
        unchecked = {m for m in used if m.startswith("vllm:")}
    missing = sorted(used - exported - unchecked)
    assert not missing, f"used by a panel or an alert but exported by no service: {missing}"
    if unchecked:
        pytest.skip(f"vLLM virtualenv missing; vllm:* names unchecked: {sorted(unchecked)}")


# --- a real Prometheus scraping the local stack ---------------------------------------------


def wait_for_series(prometheus: str, promql: str, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = query(prometheus, promql)
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{promql} never arrived in Prometheus within {timeout_s} s")


@pytest.mark.chromium
def test_prometheus_scrapes_the_local_stack_and_evaluates_dashboards_and_alerts(env_pod):
    from services.trainer.metrics import TrainerMetrics, serve

    trainer = TrainerMetrics()  # the trainer's exporter, on its own HTTP port like in `make up`
    trainer_port = serve(trainer, port=0, host="127.0.0.1")
    trainer.global_step.set(3)
    trainer.reward_mean.labels(task="click-test").set(0.75)
    targets = {"env": [env_pod], "trainer": [f"http://127.0.0.1:{trainer_port}"]}
    with run_prometheus(targets, interval_s=1.0) as prometheus:
        ns = f'namespace="{NAMESPACE}"'
        capacity = wait_for_series(prometheus, f"browserenv_sessions_capacity{{{ns}}}")
        assert capacity[0]["metric"]["container"] == "env"
        assert float(capacity[0]["value"][1]) == 2  # max_sessions of the pod
        assert asyncio.run(play_click_test(env_pod, seed=7)) == 1.0
        success = f'browserenv_episodes_total{{{ns},task="click-test",outcome="success"}}'
        wait_for_series(prometheus, f"{success} > 0")
        wait_for_series(prometheus, f"browserenv_step_seconds_count{{{ns}}} > 0")
        step = wait_for_series(prometheus, f"trainer_global_step{{{ns}}}")
        assert float(step[0]["value"][1]) == 3
        wait_for_series(prometheus, f'trainer_reward_mean{{{ns},task="click-test"}}')

        # The chart's alert rules load in a real server and evaluate cleanly.
        groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        loaded = {g["name"] for g in groups}
        assert loaded == {g["name"] for g in yaml.safe_load(alert_rules())["groups"]}
        time.sleep(2.5)  # at least one evaluation round
        groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        broken = [r["name"] for g in groups for r in g["rules"] if r.get("health") == "err"]
        assert not broken, broken

        # Every dashboard query is valid PromQL for this server and returns data where the
        # local stack has it.
        for expr in dashboard_expressions():
            promql = expr.replace("$namespace", NAMESPACE).replace("$__rate_interval", "1m")
            reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
            assert reply.status_code == 200, (promql, reply.text)
        assert query(prometheus, f"sum(browserenv_ready{{{ns}}})")
