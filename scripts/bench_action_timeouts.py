"""How often a VALID action fails on a busy machine: BrowserGym's 500 ms vs the pod's timeout.

    .venv/bin/python scripts/bench_action_timeouts.py --out runs/bench/action_timeouts.json

BrowserGym's action functions hard-code ``timeout=500`` on every Playwright call; the pod now
rewrites them to ``action_timeout_ms`` (5000 by default). This plays the scripted solvers'
correct actions (click-test, click-button, click-link, enter-text, login-user) through one pod
with 4 sessions while ``--busy-pods`` other pods play episodes and ``--load`` processes spin on
the CPU (the shape of a test suite or a training run on a small machine), once keeping
BrowserGym's 500 ms (``keep_browsergym_action_timeouts``) and once with the pod's default,
alternating,
``--repeats`` times, and counts actions whose error is a Playwright timeout. A valid action on a
present element must not fail because the machine is busy: the same task, seed and actions must
give the same outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

from services.env.client import BrowserEnvClient
from services.env.families.miniwob import oracle
from services.env.local import start_local_env_pods

TASKS = ("click-test", "click-button", "click-link", "enter-text", "login-user")


def spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        sum(i * i for i in range(10_000))


async def session(url: str, seeds: range, counts: dict) -> None:
    async with BrowserEnvClient(url, message_timeout_s=120) as env:
        for seed in seeds:
            task = TASKS[seed % len(TASKS)]
            obs = await env.reset(task=task, seed=seed)
            for action in oracle.solve(obs):
                obs = await env.step(action)
                counts["actions"] += 1
                if "Timeout" in obs.error:
                    counts["timeouts"] += 1
                    counts["examples"].append(f"{task} seed {seed}: {obs.error[:120]}")
                if obs.done:
                    break
            counts["episodes"] += 1
            counts["successes"] += int((obs.reward or 0) > 0)


async def play(url: str, episodes: int, sessions: int, busy: list[str] = ()) -> dict:
    """Play ``episodes`` on ``url``; meanwhile the ``busy`` pods play episodes until it ends."""
    counts = {"actions": 0, "timeouts": 0, "episodes": 0, "successes": 0, "examples": []}
    per = episodes // sessions
    background = {"actions": 0, "timeouts": 0, "episodes": 0, "successes": 0, "examples": []}
    load = [
        asyncio.ensure_future(session(pod, range(10_000 * (i + 1), 10_000 * (i + 2)), background))
        for pod in busy
        for i in range(sessions)
    ]
    try:
        await asyncio.gather(
            *(session(url, range(i * per, (i + 1) * per), counts) for i in range(sessions))
        )
    finally:
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)
    return counts


def measure(keep_browsergym: bool, episodes: int, load: int, busy_pods: int) -> dict:
    with start_local_env_pods(
        1 + busy_pods, max_sessions=4, keep_browsergym_action_timeouts=keep_browsergym
    ) as urls:
        asyncio.run(play(urls[0], 4, 4))  # warm the browsers before the load starts
        stop_at = time.monotonic() + 3600
        burners = [multiprocessing.Process(target=spin, args=(stop_at,)) for _ in range(load)]
        for burner in burners:
            burner.start()
        try:
            started = time.monotonic()
            counts = asyncio.run(play(urls[0], episodes, 4, busy=urls[1:]))
            counts["seconds"] = round(time.monotonic() - started, 1)
        finally:
            for burner in burners:
                burner.terminate()
                burner.join()
    counts["rate"] = counts["timeouts"] / max(counts["actions"], 1)
    counts["examples"] = counts["examples"][:3]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=40, help="episodes per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per setting")
    parser.add_argument("--load", type=int, default=2 * (os.cpu_count() or 2), help="CPU burners")
    parser.add_argument(
        "--busy-pods", type=int, default=2, help="other pods playing episodes meanwhile (load)"
    )
    parser.add_argument("--out", default="runs/bench/action_timeouts.json")
    args = parser.parse_args()

    settings = {"browsergym_500ms": True, "pod_action_timeout_5000ms": False}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for repeat in range(args.repeats):
        for name, keep_browsergym in settings.items():
            result = measure(keep_browsergym, args.episodes, args.load, args.busy_pods)
            runs[name].append(result)
            print(
                f"repeat {repeat + 1} {name}: {result['timeouts']}/{result['actions']} valid "
                f"actions timed out ({result['rate']:.1%}), {result['successes']}/"
                f"{result['episodes']} episodes solved, {result['seconds']} s",
                flush=True,
            )
    summary = {
        name: {
            "median_rate": statistics.median(r["rate"] for r in results),
            "timeouts": sum(r["timeouts"] for r in results),
            "actions": sum(r["actions"] for r in results),
            "solved": sum(r["successes"] for r in results),
            "episodes": sum(r["episodes"] for r in results),
        }
        for name, results in runs.items()
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "make bench-action-timeouts",
        "load_processes": args.load,
        "busy_pods": args.busy_pods,
        "cpus": os.cpu_count(),
        "episodes_per_measurement": args.episodes,
        "repeats": args.repeats,
        "summary": summary,
        "runs": runs,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    for name, row in summary.items():
        print(
            f"{name}: median {row['median_rate']:.1%} of valid actions timed out "
            f"({row['timeouts']}/{row['actions']}), solved {row['solved']}/{row['episodes']}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
