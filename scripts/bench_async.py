"""Rollouts that overlap the update: steps/hour and where a step's time goes, for
``rollout.max_staleness`` 0 (synchronous) vs 1 (vs 2), same model, settings and machine.

Every setting trains ``--steps`` GRPO steps from the base model with the cluster's shape as local
processes: ``local_cpu_lora_remote.yaml`` (Gemma-3-270M, LoRA, real env pods) generating on vLLM
CPU replicas (``.venv-vllm``) that receive the adapter after every step. Replay and WebRL phases
are off so every step does the same work. The settings run one after the other, in turn, for
``--rounds`` rounds on the same replicas (so a drift in the machine's load hits each alike); the
first step of every run (warm-up; an async run's first rollout is synchronous) is left out.

Per setting: median step seconds and steps/hour, median seconds the trainer waited for its
rollout, the update, the rollout's own length and generation idle (no rollout in flight); ratios
against max_staleness 0; the training success and staleness per step (a throughput benchmark: the
learning comparison is the runs' success curves, not a held-out evaluation). Writes
``runs/bench_async.json``.

    make bench-async [BENCH_ARGS="--steps 8 --staleness 0 1 2 --replicas 2"]

From a warmed-up policy (the runs' ``final/`` adapters then go to a held-out evaluation):
``--serve runs/local_cpu/sft/model --set model.source=runs/local_cpu/sft/model
--set model.prompt_format=plain`` (the replicas serve the SFT model as their base).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from services.inference.config import InferenceConfig
from services.inference.local import VLLM_PYTHON, start_local_inference

REPO = Path(__file__).resolve().parents[1]
TRAINER_CONFIG = REPO / "services/trainer/configs/local_cpu_lora_remote.yaml"
INFERENCE_CONFIG = REPO / "services/inference/configs/local_cpu_lora.yaml"
PHASES = {
    "wait_s": "rollout/wait_seconds",
    "update_s": "update/seconds",
    "rollout_s": "rollout/seconds",
    "generation_idle_s": "rollout/generation_idle_seconds",
}


def overlay(urls: list[str], staleness: int, steps: int, out: Path) -> dict:
    """What every setting changes in the trainer config (and only ``max_staleness`` differs)."""
    servers = {"endpoints": urls}
    return {
        "run": {"output_dir": str(out), "expected_minutes": None, "log_episodes": True},
        "generation": {"backend": {"servers": servers}},
        "policy_sync": {"servers": servers},
        "rollout": {"max_staleness": staleness},
        "grpo": {"max_steps": steps, "phase_steps": 0},
        "replay": {"enabled": False},
        "checkpoint": {"save_steps": 10_000, "save_total_limit": 1},
        "metrics": {"port": None},
        "eval": {"after_training": False},
    }


def train(
    urls: list[str], staleness: int, steps: int, out: Path, overrides: list[str]
) -> list[dict]:
    """One training run (a trainer process); its per-step records from metrics.jsonl."""
    out.mkdir(parents=True)
    config = out / "bench.yaml"
    config.write_text(yaml.safe_dump(overlay(urls, staleness, steps, out)))
    command = [sys.executable, "-m", "services.trainer", "train", "--no-eval"]
    command += ["--config", str(TRAINER_CONFIG), "--config", str(config)]
    command += [arg for item in overrides for arg in ("--set", item)]
    with open(out / "train.log", "wb") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return [r for r in records if r.get("stage") == "grpo" and "rollout/wait_seconds" in r]


def per_step(records: list[dict]) -> list[dict]:
    """Each step after the first: its wall seconds (between log records) and phases."""
    steps = []
    for before, record in itertools.pairwise(records):
        step = {"step": record["step"], "step_s": record["time"] - before["time"]}
        step |= {name: record.get(key, 0.0) for name, key in PHASES.items()}
        step["success"] = record.get("rollout/success_rate", 0.0)
        step["max_staleness"] = record.get("rollout/max_staleness", 0)
        steps.append(step)
    return steps


def summary(steps: list[dict], baseline: dict | None) -> dict:
    median = {key: statistics.median(s[key] for s in steps) for key in ("step_s", *PHASES)}
    row = {
        "steps_measured": len(steps),
        **{f"median_{k}": v for k, v in median.items()},
        "steps_per_hour": 3600 / median["step_s"],
        "success_per_step": [s["success"] for s in steps],
        "max_staleness_seen": max(s["max_staleness"] for s in steps),
    }
    if baseline is not None:
        row["speedup_vs_sync"] = baseline["median_step_s"] / median["step_s"]
        row["wait_ratio_vs_sync"] = median["wait_s"] / max(baseline["median_wait_s"], 1e-9)
    return row


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--staleness", type=int, nargs="+", default=[0, 1])
    cli.add_argument("--steps", type=int, default=7, help="GRPO steps per run (first not counted)")
    cli.add_argument("--rounds", type=int, default=1, help="runs per setting, in turn")
    cli.add_argument("--replicas", type=int, default=1, help="vLLM CPU replicas")
    cli.add_argument("--serve", help="model the replicas serve (default: the config's)")
    cli.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="trainer override"
    )
    cli.add_argument("--runs", type=Path, help="keep the runs here (default: a scratch folder)")
    cli.add_argument("--vllm-python", type=Path, default=VLLM_PYTHON)
    cli.add_argument("--out", type=Path, default=Path("runs/bench_async.json"))
    options = cli.parse_args()
    if 0 not in options.staleness:
        cli.error("--staleness must include 0: the synchronous baseline of the ratios")

    scratch = options.runs or Path(tempfile.mkdtemp(prefix="bench-async-"))
    scratch.mkdir(parents=True, exist_ok=True)
    # Episodes pinned to the version they started on: that many adapters loaded and in a batch.
    ahead = max(options.staleness)
    served = {"model": options.serve} if options.serve else {}
    inference = InferenceConfig.from_yaml(INFERENCE_CONFIG).model_copy(
        update={
            "keep_adapter_versions": ahead + 1,
            "max_loras": ahead + 2,
            "max_cpu_loras": ahead + 3,
            **served,
        }
    )
    load_before = os.getloadavg()
    steps: dict[int, list[dict]] = {s: [] for s in options.staleness}
    with contextlib.ExitStack() as replicas:
        urls = []
        for index in range(options.replicas):
            config = inference.model_copy(update={"update_dir": str(scratch / f"replica-{index}")})
            log = scratch / f"replica-{index}.log"
            urls.append(
                replicas.enter_context(
                    start_local_inference(config, python=options.vllm_python, log_file=log)
                )
            )
        started = time.time()
        for round_ in range(options.rounds):
            for staleness in options.staleness:
                out = scratch / f"round-{round_}-staleness-{staleness}"
                print(f">> round {round_ + 1}: max_staleness {staleness} ({out})", flush=True)
                records = train(urls, staleness, options.steps, out, options.set)
                steps[staleness] += per_step(records)
    baseline = summary(steps[0], None)
    results = {
        "command": "make bench-async " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "minutes": (time.time() - started) / 60,
        "trainer_config": str(TRAINER_CONFIG.relative_to(REPO)),
        "overrides": options.set,
        "served_model": inference.model,
        "replicas": options.replicas,
        "steps_per_run": options.steps,
        "rounds": options.rounds,
        "runs": str(scratch),
        "settings": {
            str(s): summary(steps[s], None if s == 0 else baseline) for s in options.staleness
        },
        "steps": {str(s): steps[s] for s in options.staleness},
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2))
    print(f"{'max_staleness':>13} {'step s':>7} {'steps/h':>8} {'wait s':>7} {'update s':>8} "
          f"{'rollout s':>9} {'gen idle s':>10} {'speed-up':>8}")  # fmt: skip
    for s in options.staleness:
        row = results["settings"][str(s)]
        print(
            f"{s:>13} {row['median_step_s']:>7.1f} {row['steps_per_hour']:>8.1f} "
            f"{row['median_wait_s']:>7.1f} {row['median_update_s']:>8.1f} "
            f"{row['median_rollout_s']:>9.1f} {row['median_generation_idle_s']:>10.1f} "
            f"{row.get('speedup_vs_sync', 1.0):>7.2f}x"
        )
    print(f"medians of {len(steps[0])} steps per setting; wrote {options.out}")


if __name__ == "__main__":
    main()
