"""The Helm chart, checked offline with the real Helm engine: render every value set, lint it
strictly, validate every object against the Kubernetes 1.30 schemas, compare with the golden
renders, and show that bad values are refused. No cluster is involved (none can run here)."""

from __future__ import annotations

import json
import os
from typing import Any

import helm_python as helm
import kubernetes_validate.utils as kube_validate
import pytest
import yaml

from services.inference.config import InferenceConfig
from services.trainer.config import load_config
from tests.deploy.chartlib import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    golden_path,
    golden_text,
    manifests,
    render,
    values_for,
)

# Prometheus Operator kinds: not part of Kubernetes' own schemas; checked structurally below and
# the rules by promtool (test_monitoring.py).
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, str]]:
    return {value_set: render(values_for(value_set)) for value_set in VALUE_SETS}


def objects(rendered_set: dict[str, str], kind: str | None = None) -> list[dict[str, Any]]:
    return [m for m in manifests(rendered_set) if kind is None or m["kind"] == kind]


def one(rendered_set: dict[str, str], kind: str, component: str) -> dict[str, Any]:
    found = [
        m
        for m in objects(rendered_set, kind)
        if m["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, f"expected one {kind} for {component}, got {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_is_clean_in_strict_mode(value_set):
    report = helm.lint(CHART, values_for(value_set), strict=True, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_validates_against_kubernetes_1_30(rendered, value_set):
    checked = 0
    for obj in objects(rendered[value_set]):
        if obj["kind"] in OPERATOR_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kube_validate.validate(obj, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_render_matches_golden_file(rendered, value_set):
    path = golden_path(value_set)
    text = golden_text(rendered[value_set])
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing: run `make chart-golden`"
    assert text == path.read_text(), (
        f"rendered chart differs from {path.name}: review the diff of `make chart-golden`"
    )


def test_trainer_config_schema_is_the_trainers_own_model():
    """values.schema.json embeds TrainerConfig's schema: `make chart-schema` after a change."""
    from scripts.chart_schema import SCHEMA, updated_schema
    from scripts.chart_schema import render as render_schema

    current = json.loads(SCHEMA.read_text())
    assert SCHEMA.read_text() == render_schema(updated_schema(current)), "run `make chart-schema`"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_trainer_config_map_is_a_valid_trainer_config(rendered, value_set):
    """The ConfigMap the trainer reads passes the trainer's own config validation."""
    config_map = one(rendered[value_set], "ConfigMap", "trainer")
    config = load_config(yaml.safe_load(config_map["data"]["trainer.yaml"]))
    assert config.env.discovery == "kubernetes"
    assert config.env.kubernetes_service == f"{RELEASE}-browser-rl-env"
    assert config.env.kubernetes_namespace == NAMESPACE
    assert config.metrics.port == 9000
    assert config.checkpoint.resume_from_checkpoint is True  # a restarted pod resumes
    env = pod_spec(one(rendered[value_set], "Deployment", "env"))["containers"][0]["env"]
    subsets = {e["name"]: e.get("value") for e in env}["BROWSERENV_ACTION_SUBSETS"]
    assert json.loads(subsets) == config.prompt.action_subsets  # pods accept what is prompted
    inference = values_for(value_set).get("inference", {}).get("enabled", True)
    assert config.generation.backend == ("remote" if inference else "local")
    assert config.inference.enabled == inference
    if inference:
        assert config.inference.mode == ("adapter" if config.lora.enabled else "full")


@pytest.mark.parametrize("value_set", [v for v in VALUE_SETS if v != "cpu"])
def test_inference_config_map_is_a_valid_inference_config(rendered, value_set):
    """The ConfigMap `python -m services.inference --config` reads passes its own validation."""
    config_map = one(rendered[value_set], "ConfigMap", "inference")
    config = InferenceConfig.from_mapping(
        yaml.safe_load(config_map["data"]["inference.yaml"]), env={}
    )
    assert config.host == "0.0.0.0"
    assert config.enforce_eager is False  # GPU: CUDA graphs on
    assert config.weight_transfer_backend is None  # no value set uses NCCL (see NCCL_VALUES)
    if value_set == "full":
        assert config.update_dir.startswith("/policy/")
    trainer = load_config(
        yaml.safe_load(one(rendered[value_set], "ConfigMap", "trainer")["data"]["trainer.yaml"])
    )
    assert config.enable_lora == trainer.lora.enabled
    assert trainer.generation.remote.model == config.served_model_name
    deployment = one(rendered[value_set], "Deployment", "inference")
    assert pod_spec(deployment)["containers"][0]["args"] == [
        "--config",
        "/etc/browser-rl/inference.yaml",
    ]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_is_non_root_limited_and_probed(rendered, value_set):
    for obj in objects(rendered[value_set]):
        if obj["kind"] not in {"Deployment", "Job"}:
            continue
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        for container in spec["containers"]:
            where = f"{obj['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security["readOnlyRootFilesystem"] is True, where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            assert "livenessProbe" in container, where
            assert "startupProbe" in container, where


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_gpus_are_requested_only_where_configured(rendered, value_set):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    overrides = values_for(value_set)
    for component in ("trainer", "inference"):
        enabled = overrides.get(component, {}).get("enabled", True)
        if not enabled:
            continue
        gpus = overrides.get(component, {}).get("gpus", values[component]["gpus"])
        kind = "Job" if component == "trainer" else "Deployment"
        limits = pod_spec(one(rendered[value_set], kind, component))["containers"][0]["resources"]
        assert limits["limits"].get("nvidia.com/gpu", 0) == gpus
    env = pod_spec(one(rendered[value_set], "Deployment", "env"))["containers"][0]
    assert "nvidia.com/gpu" not in env["resources"]["limits"]
    if value_set == "cpu":
        assert "nvidia.com/gpu" not in golden_text(rendered[value_set])


def test_env_service_is_headless_and_selects_the_env_pods(rendered):
    service = one(rendered["default"], "Service", "env")
    deployment = one(rendered["default"], "Deployment", "env")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    readiness = pod_spec(deployment)["containers"][0]["readinessProbe"]["httpGet"]["path"]
    assert readiness != pod_spec(deployment)["containers"][0]["livenessProbe"]["httpGet"]["path"]


def test_trainer_rbac_only_reads_endpointslices(rendered):
    role = one(rendered["default"], "Role", "trainer")
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = one(rendered["default"], "RoleBinding", "trainer")
    job = one(rendered["default"], "Job", "trainer")
    assert binding["subjects"][0]["name"] == pod_spec(job)["serviceAccountName"]
    assert not objects(rendered["default"], "ClusterRole")
    env = pod_spec(one(rendered["default"], "Deployment", "env"))
    assert env["automountServiceAccountToken"] is False


def test_env_network_policy_admits_only_trainer_and_prometheus_and_allows_no_egress(rendered):
    policy = one(rendered["default"], "NetworkPolicy", "env")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == []
    sources = [rule["from"][0] for rule in policy["spec"]["ingress"]]
    trainer_labels = one(rendered["default"], "Job", "trainer")["spec"]["template"]["metadata"]
    assert sources[0]["podSelector"]["matchLabels"].items() <= trainer_labels["labels"].items()
    assert "namespaceSelector" in sources[1]  # Prometheus, from its own namespace
    assert len(sources) == 2


def test_pod_monitors_point_at_named_ports_of_their_pods(rendered):
    for monitor in objects(rendered["default"], "PodMonitor"):
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        kind = "Job" if component == "trainer" else "Deployment"
        workload = one(rendered["default"], kind, component)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"] for c in pod_spec(workload)["containers"] for p in c["ports"]}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports


def test_dashboard_config_map_carries_the_sidecar_label_and_valid_json(rendered):
    config_map = one(rendered["default"], "ConfigMap", "dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["browser-rl.json"])
    assert dashboard["panels"]


NCCL_VALUES = {
    "trainer": {"config": {"lora": {"enabled": False}}},
    "inference": {"lora": {"enabled": False}, "weightTransfer": {"mode": "nccl"}},
}


def policy_sync(rendered_set: dict[str, str]):
    """The trainer's `inference:` section and its `extra`, validated by the policy-sync code."""
    from services.trainer.policy_sync import PolicySyncSettings

    config = load_config(
        yaml.safe_load(one(rendered_set, "ConfigMap", "trainer")["data"]["trainer.yaml"])
    )
    return config.inference, PolicySyncSettings.model_validate(config.inference.extra)


def test_weight_transfer_wiring_per_mode(rendered):
    nccl_inference = InferenceConfig.from_mapping(
        yaml.safe_load(
            one(render(NCCL_VALUES), "ConfigMap", "inference")["data"]["inference.yaml"]
        ),
        env={},
    )
    assert nccl_inference.weight_transfer_backend == "nccl"
    sync, settings = policy_sync(rendered["lora"])
    assert (sync.mode, settings.transport, sync.shared_dir) == ("adapter", "upload", None)

    sync, settings = policy_sync(rendered["full"])
    assert (sync.mode, settings.transport) == ("full", "shared_dir")
    claim = one(rendered["full"], "PersistentVolumeClaim", "policy")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for kind, component in (("Job", "trainer"), ("Deployment", "inference")):
        spec = pod_spec(one(rendered["full"], kind, component))
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        claims = {
            v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]
        }
        assert claims[mounts["/policy"]] == claim["metadata"]["name"]
    assert str(sync.shared_dir).startswith("/policy/")

    nccl = render(NCCL_VALUES)
    sync, settings = policy_sync(nccl)
    assert (sync.mode, settings.transport) == ("full", "nccl")
    service = one(nccl, "Service", "trainer")
    assert service["spec"]["clusterIP"] == "None"
    assert settings.nccl_master_address == f"{service['metadata']['name']}.{NAMESPACE}.svc"
    assert service["spec"]["ports"][0]["port"] == settings.nccl_master_port
    assert not [
        m for m in objects(rendered["lora"], "Service") if "trainer" in m["metadata"]["name"]
    ]
    for value_set in ("default", "full", "lora"):
        ports = one(rendered[value_set], "Service", "inference")["spec"]["ports"]
        assert [p["name"] for p in ports] == ["http"]


def test_changing_trainer_config_replaces_the_job_and_scaling_env_does_not():
    """Job pod templates are immutable: the Job's name carries the template hash."""

    def job_name(values):
        return one(render(values), "Job", "trainer")["metadata"]["name"]

    base = job_name({})
    assert job_name({"env": {"replicas": 9}}) == base
    assert job_name({"trainer": {"config": {"grpo": {"max_steps": 7}}}}) != base


def test_secret_is_created_or_referenced_and_wired_into_pods():
    created = render({"secrets": {"create": True, "hfToken": "hf_x"}})
    secret = one(created, "Secret", "secrets")
    assert secret["stringData"] == {"HF_TOKEN": "hf_x"}
    existing = render({"secrets": {"existingSecret": "my-tokens"}})
    assert not objects(existing, "Secret")
    env = pod_spec(one(existing, "Job", "trainer"))["containers"][0]["env"]
    refs = {
        e["name"]: e["valueFrom"].get("secretKeyRef", {}).get("name")
        for e in env
        if "valueFrom" in e
    }
    assert refs["HF_TOKEN"] == refs["VLLM_API_KEY"] == "my-tokens"
    config_map = one(existing, "ConfigMap", "trainer")
    assert "api_key_env: VLLM_API_KEY" in config_map["data"]["trainer.yaml"]


BAD_VALUES = [
    ({"env": {"replicas": -1}}, "/env/replicas"),
    ({"env": {"maxSessions": "4"}}, "/env/maxSessions"),
    ({"env": {"maxSessions": 0}}, "/env/maxSessions"),
    ({"env": {"resources": {"requests": {"cpu": "two"}}}}, "/env/resources/requests/cpu"),
    ({"env": {"port": 70000}}, "/env/port"),
    ({"env": {"image": {"digest": "latest"}}}, "/env/image/digest"),
    ({"inference": {"lora": {"maxRank": 12}}}, "/inference/lora/maxRank"),
    ({"inference": {"dtype": "int4"}}, "/inference/dtype"),
    ({"inference": {"gpuMemoryUtilization": 1.5}}, "/inference/gpuMemoryUtilization"),
    ({"inference": {"weightTransfer": {"mode": "nccl"}, "gpus": 0}}, "/inference/gpus"),
    ({"inference": {"weightTransfer": {"mode": "sharedVolume"}}}, "/policyVolume/enabled"),
    ({"trainer": {"gpus": -1}}, "/trainer/gpus"),
    ({"trainer": {"config": {"grpo": {"max_stepz": 3}}}}, "additional properties 'max_stepz'"),
    ({"trainer": {"config": {"grpo": {"max_steps": 0}}}}, "/trainer/config/grpo/max_steps"),
    ({"trainer": {"config": {"lora": {"r": "big"}}}}, "/trainer/config/lora/r"),
    ({"trainer": {"config": {"generation": {"backend": "tpu"}}}}, "/trainer/config/generation"),
    ({"monitoring": {"podMonitors": {"interval": "soon"}}}, "/monitoring/podMonitors/interval"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"secrets": {"create": True}}, "/secrets"),
    ({"envv": {}}, "additional properties 'envv'"),
    ({"env": {"replica": 3}}, "additional properties 'replica'"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(values, where):
    with pytest.raises(helm.HelmValuesError) as refused:
        render(values)
    assert where in str(refused.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"env": {"autoscaling": {"enabled": True, "minReplicas": 9, "maxReplicas": 3}}},
            "minReplicas must not exceed",
        ),
        ({"trainer": {"config": {"lora": {"r": 64}}}}, "exceeds inference.lora.maxRank"),
        ({"inference": {"lora": {"enabled": False}}}, "needs inference.lora.enabled"),
        ({"inference": {"weightTransfer": {"mode": "nccl"}}}, "mode nccl carries full weights"),
        ({"inference": {"maxModelLen": 1024}}, "maxModelLen must hold"),
    ],
)
def test_inconsistent_values_fail_the_render_with_a_reason(values, message):
    with pytest.raises(helm.HelmRenderError) as refused:
        render(values)
    assert message in str(refused.value)


def test_inference_init_container_fetches_the_hub_model_only_when_missing(rendered, tmp_path):
    """The init container's script, run for real on a cache that already holds the model: it
    must not touch the network (that path is the only one runnable offline)."""
    import subprocess
    import sys

    deployment = one(rendered["default"], "Deployment", "inference")
    (init,) = pod_spec(deployment)["initContainers"]
    script, target, repo = init["args"]
    config = InferenceConfig.from_mapping(
        yaml.safe_load(
            one(rendered["default"], "ConfigMap", "inference")["data"]["inference.yaml"]
        ),
        env={},
    )
    assert target == config.model == f"/models/{repo}"
    cached = tmp_path / "models" / repo
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-c", script, str(cached), repo],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "model ready" in result.stdout
    local = render({"inference": {"model": "/models/my-policy"}})
    assert "initContainers" not in pod_spec(one(local, "Deployment", "inference"))
