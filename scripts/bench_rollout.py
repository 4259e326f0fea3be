"""Rollout engine throughput vs a sequential loop, against real local env pods.

Baseline (what the reference example does): one episode after another, each turn generate →
step on one env session. Engine: the same episodes through ``RolloutEngine`` with 1, 2 and 4
sessions in play at once over the pods, generation batched across waiting episodes. The policy
is the rule-based ``ScriptedBackend`` (instant, always right), so the figures are those of the
env pods + rollout machinery, not of a model. Each configuration runs ``--repeats`` times;
the table shows medians, episodes/s and the ratio to the sequential baseline measured in the
same run. Results: a JSON file (``--out``).

    .venv/bin/python scripts/bench_rollout.py --episodes 16 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

from services.env.local import start_local_env_pods
from services.trainer.env_pool import EnvPool
from services.trainer.generation.base import SamplingParams
from services.trainer.generation.scripted import ScriptedBackend
from services.trainer.prompts import PromptBuilder
from services.trainer.rollout import EpisodeRequest, GenerationBatcher, RolloutEngine

TASKS = ("click-test", "enter-text", "focus-text", "click-button")


def _engine(urls: list[str], tokenizer, sessions_per_endpoint: int) -> RolloutEngine:
    prompts = PromptBuilder(tokenizer, fmt="chat", axtree_max_tokens=512)
    return RolloutEngine(
        EnvPool(urls, sessions_per_endpoint=sessions_per_endpoint),
        GenerationBatcher(ScriptedBackend(tokenizer), max_batch_size=64, wait_s=0.01),
        prompts,
        sampling=SamplingParams(max_new_tokens=32),
        max_turns=5,
        max_context_tokens=1_000_000,
        max_completion_tokens=1_000_000,
    )


async def _sequential(urls, tokenizer, requests) -> tuple[float, int]:
    engine = _engine(urls[:1], tokenizer, 1)
    start = time.perf_counter()
    episodes = [await engine.play(r) for r in requests]
    seconds = time.perf_counter() - start
    await engine.pool.aclose()
    return seconds, sum(e.success for e in episodes)


async def _concurrent(urls, tokenizer, requests, sessions: int) -> tuple[float, int]:
    per_pod = max(1, -(-sessions // len(urls)))
    engine = _engine(urls, tokenizer, per_pod)
    gate = asyncio.Semaphore(sessions)

    async def one(request):
        async with gate:
            return await engine.play(request)

    start = time.perf_counter()
    episodes = await asyncio.gather(*(one(r) for r in requests))
    seconds = time.perf_counter() - start
    await engine.pool.aclose()
    return seconds, sum(e.success for e in episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=16, help="episodes per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per configuration")
    parser.add_argument("--sessions", default="1,2,4", help="concurrent sessions to measure")
    parser.add_argument("--pods", type=int, default=2, help="local env pods")
    parser.add_argument("--out", default="runs/bench_rollout.json")
    args = parser.parse_args()

    from services.trainer.models import build_random_model

    tok_dir = build_random_model("qwen2", Path("runs/bench_rollout_tokenizer"), size="tiny")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    requests = [EpisodeRequest(TASKS[i % len(TASKS)], seed=i) for i in range(args.episodes)]
    levels = [int(s) for s in args.sessions.split(",")]
    runs: dict[str, list[dict]] = {"sequential": []} | {f"engine-{n}": [] for n in levels}
    with start_local_env_pods(args.pods, max_sessions=max(levels), ready_timeout_s=300) as urls:
        asyncio.run(_sequential(urls, tokenizer, requests[:2]))  # warm the browsers
        for _ in range(args.repeats):
            seconds, ok = asyncio.run(_sequential(urls, tokenizer, requests))
            runs["sequential"].append({"seconds": seconds, "successes": ok})
            for n in levels:
                seconds, ok = asyncio.run(_concurrent(urls, tokenizer, requests, n))
                runs[f"engine-{n}"].append({"seconds": seconds, "successes": ok})

    base = statistics.median(r["seconds"] for r in runs["sequential"])
    rows = []
    print(f"{'configuration':<14} {'median s':>9} {'episodes/s':>11} {'vs sequential':>14} success")
    for name, samples in runs.items():
        median = statistics.median(r["seconds"] for r in samples)
        success = sum(r["successes"] for r in samples) / (len(samples) * args.episodes)
        row = {
            "configuration": name,
            "median_seconds": round(median, 2),
            "episodes_per_second": round(args.episodes / median, 3),
            "ratio_vs_sequential": round(base / median, 2),
            "success_rate": round(success, 3),
            "samples_seconds": [round(r["seconds"], 2) for r in samples],
        }
        rows.append(row)
        print(
            f"{name:<14} {median:>9.2f} {row['episodes_per_second']:>11.3f} "
            f"{row['ratio_vs_sequential']:>13.2f}x {success:>8.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "make bench-rollout",
                "episodes": args.episodes,
                "repeats": args.repeats,
                "pods": args.pods,
                "tasks": TASKS,
                "policy": "ScriptedBackend (rule-based, instant)",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
