"""The Grafana dashboard, built as code: `make dashboards` writes
helm/browser-rl/files/dashboards/browser-rl.json (shipped in the chart's dashboard ConfigMap).

Three rows: env pods, trainer, inference (vLLM). Every query filters on the `$namespace`
variable (the release namespace on a cluster; `local` for `make up`). tests/deploy checks that
every metric a panel uses is really exported by a service, and that the JSON file is up to date.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "helm" / "browser-rl" / "files" / "dashboards"
NS = 'namespace="$namespace"'
RATE = "$__rate_interval"


def quantile(q: float, histogram: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{{{NS}}}[{RATE}])))"


def mean_of(histogram: str, by: str) -> str:
    return (
        f"sum by ({by}) (rate({histogram}_sum{{{NS}}}[{RATE}]))"
        f" / sum by ({by}) (rate({histogram}_count{{{NS}}}[{RATE}]))"
    )


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 8
    extra: dict = field(default_factory=dict)


ENV = [
    Panel(
        "Sessions in use vs capacity",
        [
            (f"sum(browserenv_sessions_active{{{NS}}})", "active"),
            (f"sum(browserenv_sessions_capacity{{{NS}}})", "capacity"),
        ],
        description="Near capacity: rollouts wait for browsers; scale the env Deployment.",
    ),
    Panel(
        "Ready env pods",
        [
            (f"sum(browserenv_ready{{{NS}}})", "ready"),
            (f"count(browserenv_ready{{{NS}}})", "running"),
        ],
        description="Pods that accept new sessions (the trainer uses exactly these).",
    ),
    Panel(
        "Episodes/s by outcome",
        [(f"sum by (outcome) (rate(browserenv_episodes_total{{{NS}}}[{RATE}]))", "{{outcome}}")],
        unit="ops",
    ),
    Panel(
        "Step and reset latency",
        [
            (quantile(0.5, "browserenv_step_seconds"), "step p50"),
            (quantile(0.95, "browserenv_step_seconds"), "step p95"),
            (quantile(0.5, "browserenv_reset_seconds"), "reset p50"),
            (quantile(0.95, "browserenv_reset_seconds"), "reset p95"),
        ],
        unit="s",
    ),
    Panel(
        "Errors and browser restarts",
        [
            (f"sum by (kind) (rate(browserenv_errors_total{{{NS}}}[{RATE}]))", "{{kind}}"),
            (f"sum(rate(browserenv_browser_restarts_total{{{NS}}}[{RATE}]))", "browser restarts"),
        ],
        unit="ops",
    ),
    Panel(
        "Env success rate by task",
        [
            (
                f'sum by (task) (rate(browserenv_episodes_total{{{NS},outcome="success"}}[{RATE}]))'
                f" / sum by (task) (rate(browserenv_episodes_total{{{NS}}}[{RATE}]))",
                "{{task}}",
            )
        ],
        unit="percentunit",
    ),
    Panel(
        "Env steps/s by task",
        [(f"sum by (task) (rate(browserenv_steps_total{{{NS}}}[{RATE}]))", "{{task}}")],
        unit="ops",
    ),
    Panel(
        "Env pod memory (RSS)",
        [(f'process_resident_memory_bytes{{{NS},container="env"}}', "{{pod}}")],
        unit="bytes",
    ),
]

TRAINER = [
    Panel(
        "Reward mean by task",
        [(f"trainer_reward_mean{{{NS}}}", "{{task}}")],
        description="Mean episode reward of the last step's rollouts.",
    ),
    Panel(
        "Success rate by task",
        [(f"trainer_success_rate{{{NS}}}", "{{task}}")],
        unit="percentunit",
    ),
    Panel(
        "Held-out seeds at each phase start",
        [(f"trainer_phase_eval_success{{{NS}}}", "{{tasks}} tasks")],
        unit="percentunit",
        description="The live policy, greedy, on the first eval.phase_seeds held-out seeds of "
        "every evaluated task, at the start, each phase boundary and the end of GRPO: the "
        "trained tasks' mean beside the held-out tasks'.",
    ),
    Panel(
        "Curriculum: share of groups by task",
        [(f"trainer_curriculum_weight{{{NS}}}", "{{task}}")],
        unit="percentunit",
        description="Where the next GRPO groups go (curriculum.strategy: learnability).",
    ),
    Panel(
        "Loss, KL, grad norm",
        [
            (f"trainer_loss{{{NS}}}", "loss"),
            (f"trainer_kl{{{NS}}}", "kl"),
            (f"trainer_grad_norm{{{NS}}}", "grad norm"),
        ],
    ),
    Panel(
        "Stage, SFT loss",
        [
            (f"trainer_stage{{{NS}}} == 1", "{{stage}}"),
            (f"trainer_sft_loss{{{NS}}}", "SFT loss"),
        ],
        description="Which stage runs (demos, sft, grpo, eval) and the SFT warm-up's loss.",
    ),
    Panel(
        "Replay (WebRL)",
        [
            (f"trainer_replay_pool{{{NS}}}", "successes in the band"),
            (f"trainer_replay_nll{{{NS}}}", "replayed NLL"),
        ],
        description="Past successes inside the probability band this phase, and the mean NLL of "
        "the step's replayed action tokens (replay.enabled).",
    ),
    Panel(
        "Step time: rollout, wait, update, generation idle",
        [(mean_of("trainer_step_seconds", "phase"), "{{phase}}")],
        unit="s",
        description="Mean seconds per phase of an optimizer step: the rollout's own length, how "
        "long the trainer waited for it (shorter when rollout.max_staleness plays it ahead), the "
        "update, and how long generation had nothing to play before it (the update and push, "
        "when nothing runs ahead).",
    ),
    Panel(
        "Policy staleness",
        [
            (quantile(0.5, "trainer_policy_staleness"), "p50"),
            (quantile(0.9, "trainer_policy_staleness"), "p90"),
        ],
        description="Trainer policy version minus the version that generated a sample (at most "
        "rollout.max_staleness, plus a push that lagged).",
    ),
    Panel(
        "Generated tokens/s and episodes/s",
        [
            (f"sum(rate(trainer_generated_tokens_total{{{NS}}}[{RATE}]))", "tokens/s"),
            (f"sum(trainer_rollout_episodes_per_second{{{NS}}})", "episodes/s"),
        ],
    ),
    Panel(
        "Invalid action rate",
        [
            (
                f"sum(rate(trainer_invalid_actions_total{{{NS}}}[{RATE}]))"
                f" / sum(rate(trainer_actions_total{{{NS}}}[{RATE}]))",
                "invalid",
            )
        ],
        unit="percentunit",
    ),
    Panel(
        "Infra retries by reason",
        [(f"sum by (reason) (rate(trainer_infra_retries_total{{{NS}}}[{RATE}]))", "{{reason}}")],
        unit="ops",
        description="Episodes replayed after pod deaths, timeouts or capacity refusals.",
    ),
    Panel(
        "Global step and policy versions",
        [
            (f"max(trainer_global_step{{{NS}}})", "global step"),
            (f"max(trainer_policy_version{{{NS}}})", "trainer policy"),
            (f"max(inference_policy_version{{{NS}}})", "served policy"),
        ],
    ),
    Panel(
        "Episode turns",
        [
            (quantile(0.5, "trainer_episode_turns"), "p50"),
            (quantile(0.9, "trainer_episode_turns"), "p90"),
        ],
    ),
    Panel(
        "Episodes/s by outcome (trainer)",
        [(f"sum by (outcome) (rate(trainer_episodes_total{{{NS}}}[{RATE}]))", "{{outcome}}")],
        unit="ops",
    ),
]

INFERENCE = [
    Panel(
        "vLLM requests running / waiting",
        [
            (f"sum(vllm:num_requests_running{{{NS}}})", "running"),
            (f"sum(vllm:num_requests_waiting{{{NS}}})", "waiting"),
        ],
    ),
    Panel(
        "vLLM KV cache usage",
        [(f"max(vllm:kv_cache_usage_perc{{{NS}}})", "kv cache")],
        unit="percentunit",
        extra={"max": 1},
    ),
    Panel(
        "Time to first token",
        [
            (quantile(0.5, "vllm:time_to_first_token_seconds"), "p50"),
            (quantile(0.95, "vllm:time_to_first_token_seconds"), "p95"),
        ],
        unit="s",
    ),
    Panel(
        "vLLM tokens/s",
        [
            (f"sum(rate(vllm:generation_tokens_total{{{NS}}}[{RATE}]))", "generated"),
            (f"sum(rate(vllm:prompt_tokens_total{{{NS}}}[{RATE}]))", "prompt"),
        ],
    ),
    Panel(
        "End-to-end request latency",
        [
            (quantile(0.5, "vllm:e2e_request_latency_seconds"), "p50"),
            (quantile(0.95, "vllm:e2e_request_latency_seconds"), "p95"),
        ],
        unit="s",
    ),
    Panel(
        "Replicas: version lag and requests in flight (trainer's view)",
        [
            (
                f"max by (replica) (trainer_inference_replica_version_lag{{{NS}}})",
                "lag {{replica}}",
            ),
            (
                f"sum by (replica) (trainer_inference_replica_in_flight{{{NS}}})",
                "in flight {{replica}}",
            ),
            (f"sum(trainer_inference_replica_up{{{NS}}})", "replicas up"),
            (f"sum(rate(trainer_inference_retries_total{{{NS}}}[{RATE}]))", "retried requests/s"),
        ],
        description="Lag above 0: a replica behind the pushed policy (restarted, refused an "
        "update) that gets no generation until the trainer updates it. Retries: requests moved "
        "to another replica after theirs failed.",
    ),
    Panel(
        "Weight updates",
        [
            (quantile(0.95, "inference_weight_update_seconds", by="kind"), "{{kind}} p95 s"),
            (
                f"sum by (kind, result) (increase(inference_weight_updates_total{{{NS}}}[{RATE}]))",
                "{{kind}} {{result}}",
            ),
        ],
    ),
]

WEBRL = [
    Panel(
        "Outcome reward model: judgements/s and YES rate",
        [
            (f"sum(rate(trainer_orm_judgements_total{{{NS}}}[{RATE}]))", "judgements/s"),
            (
                f'sum(rate(trainer_orm_judgements_total{{verdict="yes",{NS}}}[{RATE}])) / '
                f"sum(rate(trainer_orm_judgements_total{{{NS}}}[{RATE}]))",
                "YES rate",
            ),
        ],
        description="Episodes the ORM reward source judged (rewards: type orm). A YES rate far "
        "from the checker's success rate on checked tasks is a judge to distrust.",
    ),
    Panel(
        "Outcome reward model: seconds per step's judgement",
        [
            (quantile(0.5, "trainer_orm_batch_seconds"), "p50"),
            (quantile(0.95, "trainer_orm_batch_seconds"), "p95"),
        ],
        unit="s",
    ),
    Panel(
        "Generated tasks: pool and fates",
        [
            (f"max(trainer_task_pool_size{{{NS}}})", "pool"),
            (
                f"sum by (generator, fate) (trainer_generated_tasks_total{{{NS}}})",
                "{{generator}} {{fate}}",
            ),
        ],
        description="task_generation: goals written from failed pages at each phase boundary; "
        "kept when the probe's success rate is in the band, else too easy, too hard or broken "
        "(their page could not be set up or checked).",
    ),
]

ROWS = [
    ("Env pods", ENV),
    ("Trainer", TRAINER),
    ("WebRL: outcome reward model and generated tasks", WEBRL),
    ("Inference (vLLM)", INFERENCE),
]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    defaults: dict = {"unit": panel.unit, **panel.extra}
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                "datasource": DATASOURCE,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def dashboard() -> dict:
    panels, panel_id, y = [], 1, 0
    for title, row in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(panel_json(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return {
        "uid": "browser-rl",
        "title": "browser-rl: env pods, trainer, vLLM",
        "tags": ["browser-rl", "rl", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "editable": True,
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                    "current": {},
                },
                {
                    "name": "namespace",
                    "type": "query",
                    "label": "Namespace",
                    "datasource": DATASOURCE,
                    "refresh": 2,
                    "query": {
                        "query": "label_values(browserenv_sessions_capacity, namespace)",
                        "refId": "namespace",
                    },
                    "definition": "label_values(browserenv_sessions_capacity, namespace)",
                    "current": {},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def expressions(board: dict) -> list[str]:
    """Every PromQL expression in a dashboard (for the metric-existence test)."""
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "browser-rl.json"
    path.write_text(render())
    print(f"wrote {path}", file=sys.stderr)
