"""The Helm chart, checked offline with the real Helm engine: render every value set, lint it
strictly, validate every object against the Kubernetes 1.30 schemas, compare with the golden
renders, and show that bad values are refused. No cluster is involved (none can run here)."""

from __future__ import annotations

import base64
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
    render_set,
    values_for,
)

# Prometheus Operator kinds: not part of Kubernetes' own schemas; checked structurally below and
# the rules by promtool (test_monitoring.py).
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, str]]:
    return {value_set: render_set(value_set) for value_set in VALUE_SETS}


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
    assert config.env.discovery.type == "kubernetes"
    assert config.env.discovery.service == f"{RELEASE}-browser-rl-env"
    assert config.env.discovery.namespace == NAMESPACE
    assert config.metrics.port == 9000
    assert config.checkpoint.resume_from_checkpoint is True  # a restarted pod resumes
    env = pod_spec(one(rendered[value_set], "Deployment", "env"))["containers"][0]["env"]
    subsets = {e["name"]: e.get("value") for e in env}["BROWSERENV_ACTION_SUBSETS"]
    assert json.loads(subsets) == config.prompt.action_subsets  # pods accept what is prompted
    inference = values_for(value_set).get("inference", {}).get("enabled", True)
    assert config.generation.backend.type == ("remote" if inference else "local")
    assert config.policy_sync.enabled == inference
    if inference:
        assert config.policy_sync.mode == ("adapter" if config.lora.enabled else "full")


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
    assert trainer.generation.backend.model == config.served_model_name
    # One model value for both sides (they exchange token ids): each pod fetches the same
    # repository at the same revision, and the trainer loads what its init container fetched.
    assert config.model == "/models/LiquidAI/LFM2-350M"
    job = pod_spec(one(rendered[value_set], "Job", "trainer"))
    (fetch,) = [c for c in job["initContainers"] if c["name"] == "fetch-model"]
    (served,) = [
        c
        for c in pod_spec(one(rendered[value_set], "Deployment", "inference"))["initContainers"]
        if c["name"] == "fetch-model"
    ]
    assert fetch["args"][1:] == [trainer.model.source, *served["args"][2:]]
    assert fetch["args"][2:4] == ["LiquidAI/LFM2-350M", "main"]
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
    """The trainer's `policy_sync` section (twice, as the callers compare fields of both)."""
    config = load_config(
        yaml.safe_load(one(rendered_set, "ConfigMap", "trainer")["data"]["trainer.yaml"])
    )
    return config.policy_sync, config.policy_sync


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
    assert settings.nccl.master_address == f"{service['metadata']['name']}.{NAMESPACE}.svc"
    assert service["spec"]["ports"][0]["port"] == settings.nccl.master_port
    lora_trainer = one(rendered["lora"], "Service", "trainer")  # /metrics only: no NCCL port
    assert [p["name"] for p in lora_trainer["spec"]["ports"]] == ["metrics"]
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


def _secret_refs(rendered_set, kind, component, containers="containers"):
    refs = {}
    for container in pod_spec(one(rendered_set, kind, component)).get(containers, []):
        for e in container.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs[e["name"]] = ref
    return refs


def test_secret_is_created_or_referenced_and_wired_into_pods():
    created = render({"secrets": {"hfToken": {"value": "hf_x"}}})
    secret = one(created, "Secret", "secrets")
    assert base64.b64decode(secret["data"]["HF_TOKEN"]) == b"hf_x"
    assert len(base64.b64decode(secret["data"]["VLLM_API_KEY"])) == 48  # generated
    existing = render(
        {"secrets": {"hfToken": {"existingSecret": "my-tokens"},
                     "apiKey": {"existingSecret": "my-tokens"}}}
    )  # fmt: skip
    assert not objects(existing, "Secret")
    hub = _secret_refs(existing, "Job", "trainer", "initContainers")["HF_TOKEN"]
    api = _secret_refs(existing, "Job", "trainer")["VLLM_API_KEY"]
    assert hub["name"] == api["name"] == "my-tokens"
    assert hub["optional"] is True and "optional" not in api  # a missing key stops the pod
    config_map = one(existing, "ConfigMap", "trainer")
    assert "api_key_env: VLLM_API_KEY" in config_map["data"]["trainer.yaml"]


def test_a_secret_holding_only_a_hub_token_starts_every_pod():
    """A Secret with only HF_TOKEN used to switch the API key on and
    crash vLLM and the trainer. Now each has its own switch: the key comes from the chart's
    generated Secret (or is off), the hub token from the user's."""
    rendered_set = render({"secrets": {"hfToken": {"existingSecret": "hub-only"}}})
    for kind, component in (("Job", "trainer"), ("Deployment", "inference")):
        fetch = _secret_refs(rendered_set, kind, component, "initContainers")
        assert fetch["HF_TOKEN"] == {"name": "hub-only", "key": "HF_TOKEN", "optional": True}
        main = _secret_refs(rendered_set, kind, component)
        assert main["VLLM_API_KEY"]["name"] == f"{RELEASE}-browser-rl-secrets"
    assert set(one(rendered_set, "Secret", "secrets")["data"]) == {"VLLM_API_KEY"}

    no_key = render(
        {"secrets": {"hfToken": {"existingSecret": "hub-only"}, "apiKey": {"enabled": False}}}
    )
    assert not objects(no_key, "Secret")
    assert "VLLM_API_KEY" not in _secret_refs(no_key, "Job", "trainer")
    trainer = load_config(
        yaml.safe_load(one(no_key, "ConfigMap", "trainer")["data"]["trainer.yaml"])
    )
    inference = InferenceConfig.from_mapping(
        yaml.safe_load(one(no_key, "ConfigMap", "inference")["data"]["inference.yaml"]), env={}
    )
    assert trainer.policy_sync.api_key_env is None and inference.api_key_env is None
    assert trainer.generation.backend.api_key_env is None


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
    ({"trainer": {"config": {"grpo": {"max_steps": -1}}}}, "/trainer/config/grpo/max_steps"),
    ({"trainer": {"config": {"lora": {"r": "big"}}}}, "/trainer/config/lora/r"),
    ({"trainer": {"config": {"generation": {"backend": "tpu"}}}}, "/trainer/config/generation"),
    ({"monitoring": {"podMonitors": {"interval": "soon"}}}, "/monitoring/podMonitors/interval"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"secrets": {"create": True}}, "/secrets"),
    ({"trainer": {"runtimeClass": "nvidia"}}, "additional properties 'runtimeClass'"),
    ({"inference": {"podAnnotations": {"a": 1}}}, "/inference/podAnnotations/a"),
    ({"trainer": {"gpuResource": "gpu"}}, "/trainer/gpuResource"),
    ({"monitoring": {"podMonitors": {"enabled": "sometimes"}}}, "/monitoring/podMonitors/enabled"),
    ({"model": {"source": ""}}, "/model/source"),
    ({"policyVolume": {"enabled": True}}, "/policyVolume/storageClassName"),
    ({"inference": {"model": "x/y"}}, "additional properties 'model'"),
    ({"envv": {}}, "additional properties 'envv'"),
    ({"env": {"replica": 3}}, "additional properties 'replica'"),
    ({"trainer": {"nodes": 0}}, "/trainer/nodes"),
    ({"trainer": {"distributed": "zero2"}}, "/trainer/distributed"),
    ({"trainer": {"offload": "nvme"}}, "/trainer/offload"),
    ({"trainer": {"nodes": 2}}, "/trainer/checkpoints/accessMode"),  # RWX needed
    (
        {"trainer": {"nodes": 2, "gpus": 0, "checkpoints": {"accessMode": "ReadWriteMany"}}},
        "/trainer/gpus",
    ),
    ({"inference": {"replicas": 0}}, "/inference/replicas"),
    ({"inference": {"replicas": 3}}, "/inference/modelCache"),  # RWX (or a given claim) needed
    ({"inference": {"autoscaling": {"enabled": True}}}, "/inference/modelCache"),
    ({"inference": {"autoscaling": {"metric": ""}}}, "/inference/autoscaling/metric"),
    (
        {
            "inference": {
                "replicas": 2,
                "modelCache": {"existingClaim": "models"},
                "weightTransfer": {"mode": "nccl"},
            },
            "trainer": {"config": {"lora": {"enabled": False}}},
        },
        "/inference/weightTransfer/mode",  # NCCL reaches one replica
    ),
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
        ({"trainer": {"config": {"model": {"source": "x/y"}}}}, "set the model with model.source"),
        (
            {
                "trainer": {
                    "nodes": 2,
                    "checkpoints": {"accessMode": "ReadWriteMany"},
                    "config": {"lora": {"enabled": False}},
                },
                "inference": {"weightTransfer": {"mode": "nccl"}},
            },
            "mode nccl with trainer.nodes > 1",
        ),
        (
            {"trainer": {"gpus": 8, "distributed": "fsdp2"}, "inference": {"enabled": False}},
            "fsdp2 generates with vLLM: enable inference",
        ),
        (
            {
                "trainer": {"gpus": 8, "distributed": "zero3"},
                "inference": {"weightTransfer": {"mode": "nccl"}},
            },
            "zero3 with inference.weightTransfer.mode nccl: the NCCL transfer reads whole",
        ),
        ({"trainer": {"offload": "all"}}, "offload all needs trainer.distributed fsdp2 or zero3"),
        (
            {"trainer": {"gpus": 8, "distributed": "fsdp2", "offload": "optimizer"}},
            "FSDP2 offloads parameters, gradients and the optimizer step together",
        ),
    ],
)
def test_inconsistent_values_fail_the_render_with_a_reason(values, message):
    with pytest.raises(helm.HelmRenderError) as refused:
        render(values)
    assert message in str(refused.value)


def test_fetch_model_init_containers_skip_a_complete_download(rendered, tmp_path):
    """The init containers' script, run for real on a cache that holds a complete download (its
    marker written last): it must not touch the network (the only path runnable offline). A
    cache holding files but no marker (an interrupted download) is not taken for complete."""
    import subprocess
    import sys

    for kind, component in (("Deployment", "inference"), ("Job", "trainer")):
        spec = pod_spec(one(rendered["default"], kind, component))
        (init,) = [c for c in spec["initContainers"] if c["name"] == "fetch-model"]
        script, _target, repo, revision, patterns = init["args"]
        assert (repo, revision) == ("LiquidAI/LFM2-350M", "main")
        cached = tmp_path / component / repo
        cached.mkdir(parents=True)
        (cached / "config.json").write_text("{}")
        offline = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

        def fetch(
            folder=cached,
            script=script,
            repo=repo,
            revision=revision,
            patterns=patterns,
            offline=offline,
        ):
            return subprocess.run(
                [sys.executable, "-c", script, str(folder), repo, revision, patterns],
                capture_output=True,
                text=True,
                timeout=60,
                env=offline,
            )

        partial = fetch()
        assert partial.returncode != 0  # no marker: it asks the hub (unreachable here) again
        assert not (cached / ".browser-rl-download").exists()
        request = {"repo": repo, "revision": revision, "patterns": json.loads(patterns)}
        marker = {"request": request, "commit": "0123abc"}
        (cached / ".browser-rl-download").write_text(json.dumps(marker))
        done = fetch()
        assert done.returncode == 0, done.stderr
        assert "model ready" in done.stdout
    local = render({"model": {"source": "/models/my-policy"}})
    for kind, component in (("Deployment", "inference"), ("Job", "trainer")):
        assert "initContainers" not in pod_spec(one(local, kind, component))


def test_without_the_prometheus_operator_no_operator_objects_are_rendered():
    """kind/minikube (values-cpu.yaml) and any cluster without kube-prometheus-stack: an install
    must not fail on PodMonitor/PrometheusRule; `enabled: true` still forces them."""
    for values in ({}, values_for("cpu")):
        bare = render(values, api_versions=())
        assert not [m for m in manifests(bare) if m["kind"] in OPERATOR_KINDS]
        assert "No PodMonitors were rendered" in next(
            text for path, text in bare.items() if path.endswith("NOTES.txt")
        )
    forced = render(
        {"monitoring": {"podMonitors": {"enabled": True}, "prometheusRule": {"enabled": True}}},
        api_versions=(),
    )
    assert {m["kind"] for m in manifests(forced)} >= OPERATOR_KINDS
    off = render({"monitoring": {"podMonitors": {"enabled": False}}})
    assert not objects(off, "PodMonitor") and objects(off, "PrometheusRule")


def test_monitoring_defaults_work_with_kube_prometheus_stack(rendered):
    """Its default podMonitorSelector/ruleSelector match `release: <its release>`, and its
    Prometheus pod is labelled app.kubernetes.io/name=prometheus in its own namespace."""
    for monitor in objects(rendered["default"], "PodMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = one(rendered["default"], "PrometheusRule", "alerts")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    policy = one(rendered["default"], "NetworkPolicy", "env")
    prometheus = policy["spec"]["ingress"][1]["from"][0]
    assert prometheus["namespaceSelector"] == {}  # any namespace
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_tainted_gpu_pools_get_tolerations_runtime_class_and_the_rest_of_the_pod_surface():
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    gpu_pod = {
        "tolerations": [toleration],
        "runtimeClassName": "nvidia",
        "priorityClassName": "training",
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "podAnnotations": {"team": "rl"},
        "podLabels": {"cost-center": "research"},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
             "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "extraVolumes": [{"name": "datasets", "persistentVolumeClaim": {"claimName": "ds"}}],
        "extraVolumeMounts": [{"name": "datasets", "mountPath": "/datasets"}],
        "gpuResource": "nvidia.com/mig-3g.40gb",
    }  # fmt: skip
    rendered_set = render({"trainer": gpu_pod, "inference": gpu_pod})
    for kind, component in (("Job", "trainer"), ("Deployment", "inference")):
        workload = one(rendered_set, kind, component)
        spec = pod_spec(workload)
        assert spec["tolerations"] == [toleration]
        assert (spec["runtimeClassName"], spec["priorityClassName"]) == ("nvidia", "training")
        assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
        metadata = workload["spec"]["template"]["metadata"]
        assert metadata["annotations"]["team"] == "rl"
        assert metadata["labels"]["cost-center"] == "research"
        assert {"name": "datasets", "persistentVolumeClaim": {"claimName": "ds"}} in spec["volumes"]
        container = spec["containers"][0]
        assert {"name": "datasets", "mountPath": "/datasets"} in container["volumeMounts"]
        assert container["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == 1
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        kube_validate.validate(workload, KUBE_VERSION, strict=True)


def test_values_full_needs_an_rwx_class_and_prepares_the_volume_for_the_pods_user():
    bare = helm.values_from_yaml((CHART / "values-full.yaml").read_text())
    with pytest.raises(helm.HelmValuesError) as refused:
        render(bare)
    assert "/policyVolume/storageClassName" in str(refused.value)
    with_class = {**bare, "policyVolume": {**bare["policyVolume"], "storageClassName": "efs"}}
    rendered_set = render(with_class)
    claim = one(rendered_set, "PersistentVolumeClaim", "policy")
    assert (claim["spec"]["storageClassName"], claim["spec"]["accessModes"]) == (
        "efs",
        ["ReadWriteMany"],
    )
    for kind, component in (("Job", "trainer"), ("Deployment", "inference")):
        spec = pod_spec(one(rendered_set, kind, component))
        (prepare,) = [c for c in spec["initContainers"] if c["name"] == "prepare-policy-volume"]
        assert "chown 10001:10001 /policy/updates /policy/inference" in prepare["args"][0]
        assert prepare["securityContext"]["capabilities"]["add"] == [
            "CHOWN",
            "FOWNER",
            "DAC_OVERRIDE",
        ]
        assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    existing = render({**bare, "policyVolume": {**bare["policyVolume"], "existingClaim": "nfs"}})
    assert not objects(existing, "PersistentVolumeClaim")[2:]  # only checkpoints and models
    # Helm's null removes values.yaml's per-task caps of the click tasks from book-flight.
    trainer = load_config(
        yaml.safe_load(one(rendered_set, "ConfigMap", "trainer")["data"]["trainer.yaml"])
    )
    assert trainer.tasks.max_turns_per_task == {}


def test_a_chart_version_bump_leaves_the_running_trainer_job_alone(tmp_path):
    """The pod templates carry no chart version: `helm upgrade` to a new chart version with the
    same values must not replace the trainer Job (it would restart the run) or roll vLLM."""
    import shutil

    bumped = tmp_path / "browser-rl"
    shutil.copytree(CHART, bumped)
    chart = yaml.safe_load((bumped / "Chart.yaml").read_text())
    chart["version"] = "0.2.0"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(chart))
    with helm.Chart.load(bumped) as new_chart:
        new = new_chart.render({}, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    old = render({}, api_versions=())
    assert (
        one(new, "Job", "trainer")["metadata"]["name"]
        == one(old, "Job", "trainer")["metadata"]["name"]
    )
    assert one(new, "Job", "trainer")["metadata"]["labels"]["helm.sh/chart"] == "browser-rl-0.2.0"
    for component in ("inference", "env"):
        assert (
            one(new, "Deployment", component)["spec"]["template"]
            == one(old, "Deployment", component)["spec"]["template"]
        )
    assert (
        one(render({"trainer": {"attempt": 1}}), "Job", "trainer")["metadata"]["name"]
        != (one(old, "Job", "trainer")["metadata"]["name"])
    )


def test_trainer_job_survives_evictions_and_stops_on_a_config_error(rendered):
    job = one(rendered["default"], "Job", "trainer")
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    }
    assert rules[1]["action"] == "Ignore"
    assert rules[1]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never" and spec["terminationGracePeriodSeconds"] >= 600
    template = job["spec"]["template"]["metadata"]["annotations"]
    assert template["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"


def test_env_readiness_does_not_turn_a_busy_pod_unready(rendered):
    probe = pod_spec(one(rendered["default"], "Deployment", "env"))["containers"][0]
    assert probe["readinessProbe"]["httpGet"]["path"] == "/ready"  # draining or broken only


def test_helm_test_pod_reaches_every_component_through_the_network_policies(rendered):
    (test_pod,) = [m for m in objects(rendered["default"], "Pod")]
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    labels = test_pod["metadata"]["labels"]
    for component in ("env", "inference", "trainer"):
        policy = one(rendered["default"], "NetworkPolicy", component)
        selectors = [
            source["podSelector"]["matchLabels"]
            for rule in policy["spec"]["ingress"]
            for source in rule["from"]
            if "podSelector" in source and "namespaceSelector" not in source
        ]
        assert any(s.items() <= labels.items() for s in selectors), component
    args = test_pod["spec"]["containers"][0]["args"]
    assert args[1] == f"http://{RELEASE}-browser-rl-env.{NAMESPACE}.svc:8000"
    assert args[3] == f"http://{RELEASE}-browser-rl-trainer.{NAMESPACE}.svc:9000"
    kube_validate.validate(test_pod, KUBE_VERSION, strict=True)


def test_eight_gpus_start_one_training_process_each(rendered):
    job = one(rendered["8gpu"], "Job", "trainer")
    container = pod_spec(job)["containers"][0]
    assert container["command"] == ["torchrun"]
    assert container["args"][:2] == ["--standalone", "--nproc-per-node=8"]
    train = ["-m", "services.trainer", "train", "--config", "/etc/browser-rl/trainer.yaml"]
    assert container["args"][3:] == train
    assert "completionMode" not in job["spec"]  # one pod


@pytest.mark.parametrize(("engine", "offload"), [("fsdp2", "all"), ("zero3", "optimizer")])
def test_a_sharded_engine_reaches_the_trainer_config_with_vllm_generating(engine, offload):
    r = render({"trainer": {"gpus": 8, "distributed": engine, "offload": offload}})
    config = load_config(yaml.safe_load(one(r, "ConfigMap", "trainer")["data"]["trainer.yaml"]))
    assert config.run.distributed == engine and config.run.offload == offload
    assert config.generation.backend.type == "remote"  # rank 0 never runs the sharded model
    assert config.policy_sync.transport != "nccl"  # the shards are gathered, then pushed


def test_two_nodes_run_as_an_indexed_job_that_meets_through_the_headless_service(rendered):
    r = rendered["2x8gpu"]
    job, service = one(r, "Job", "trainer"), one(r, "Service", "trainer")
    spec = pod_spec(job)
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 2)
    assert job["spec"]["parallelism"] == 2
    # <job>-<index>.<service> resolves (before the pods are ready: they meet first) ...
    assert spec["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports["rendezvous"] == 29500
    # ... and every pod's torchrun finds pod 0 there, 8 processes per pod, 2 pods.
    launch = spec["containers"][0]["args"][0]
    assert spec["containers"][0]["command"] == ["sh", "-c"]
    assert "--nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d" in launch
    assert f'--rdzv-endpoint="${{HOSTNAME%-*}}-0.{service["metadata"]["name"]}:29500"' in launch
    assert "--max-restarts=3" in launch
    claim = one(r, "PersistentVolumeClaim", "checkpoints")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # The trainer pods may talk to each other (rendezvous, then NCCL's ephemeral ports).
    policy = one(r, "NetworkPolicy", "trainer")
    trainer_labels = job["spec"]["template"]["metadata"]["labels"]
    peers = [
        rule
        for rule in policy["spec"]["ingress"]
        if any(
            set(src.get("podSelector", {}).get("matchLabels", {}).items())
            <= set(trainer_labels.items())
            and src.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            == "trainer"
            for src in rule["from"]
        )
    ]
    assert peers and "ports" not in peers[0]
    assert "publishNotReadyAddresses" in golden_text(rendered["default"])  # harmless for 1 pod


def test_three_inference_replicas_are_each_addressed_updated_and_spread_over_nodes(rendered):
    r = rendered["3replicas"]
    deployment = one(r, "Deployment", "inference")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    anti = pod_spec(deployment)["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    budget = one(r, "PodDisruptionBudget", "inference")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert one(r, "PersistentVolumeClaim", "models")["spec"]["accessModes"] == ["ReadWriteMany"]
    # The trainer finds every replica pod through the inference Service's EndpointSlices, for
    # generation and for policy updates alike (the RBAC it has for env discovery covers it).
    config = yaml.safe_load(one(r, "ConfigMap", "trainer")["data"]["trainer.yaml"])
    service = one(r, "Service", "inference")
    servers = {
        "type": "kubernetes",
        "service": service["metadata"]["name"],
        "namespace": NAMESPACE,
        "port_name": "http",
    }
    assert config["generation"]["backend"]["servers"] == servers
    assert config["policy_sync"]["servers"] == servers
    assert {p["name"] for p in service["spec"]["ports"]} == {"http"}
    # One replica keeps the old shape: no budget, no anti-affinity, Recreate.
    single = one(rendered["default"], "Deployment", "inference")
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in pod_spec(single)
    assert not [o for o in objects(rendered["default"], "PodDisruptionBudget")
                if o["metadata"]["name"].endswith("inference")]  # fmt: skip


def test_inference_replicas_can_follow_vllms_request_queue():
    rwx = {"accessMode": "ReadWriteMany", "storageClassName": "nfs-rwx"}
    autoscaling = {"enabled": True, "minReplicas": 2, "maxReplicas": 6, "targetAverageValue": 4}
    r = render({"inference": {"autoscaling": autoscaling, "modelCache": rwx}})
    hpa = one(r, "HorizontalPodAutoscaler", "inference")
    deployment = one(r, "Deployment", "inference")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert one(r, "PodDisruptionBudget", "inference")["spec"]["maxUnavailable"] == 1
    with pytest.raises(Exception, match="minReplicas must not exceed"):
        render({"inference": {"autoscaling": {**autoscaling, "minReplicas": 7}, "modelCache": rwx}})


def test_a_trainer_running_ahead_gets_enough_adapter_slots_for_its_pinned_versions():
    """rollout.max_staleness k pins each episode to the version it started on: the service keeps
    k + 1 adapter versions loaded and batches k + 2 of them."""
    r = render({"trainer": {"config": {"rollout": {"max_staleness": 2}}}})
    config = yaml.safe_load(one(r, "ConfigMap", "inference")["data"]["inference.yaml"])
    assert (config["keep_adapter_versions"], config["max_loras"]) == (3, 4)
    trainer = yaml.safe_load(one(r, "ConfigMap", "trainer")["data"]["trainer.yaml"])
    assert load_config(trainer).rollout.max_staleness == 2
