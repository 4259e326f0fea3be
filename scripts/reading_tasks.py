"""Which tasks need the goal read: for each task, over N seeds, the scripted solver's success and
how many different element ids its first action targets (1 = the same id on every page, an id
sequence a policy can memorise; more = the goal decides). BENCHMARKS.md "Reading tasks".

    python scripts/reading_tasks.py --seeds 20 [--tasks click-button,click-tab]
"""

from __future__ import annotations

import argparse
import asyncio
import re

from services.env.client import BrowserEnvClient
from services.env.families.miniwob.solvers import SOLVERS
from services.env.local import start_local_env_pods

MAX_ACTIONS = 6


async def survey(url: str, tasks: list[str], seeds: range) -> list[tuple[str, int, set[str]]]:
    rows = []
    async with BrowserEnvClient(url) as env:
        for task in tasks:
            solved, targets = 0, set()
            for seed in seeds:
                obs = await env.reset(task=task, seed=seed)
                for turn in range(MAX_ACTIONS):
                    action = (await env.demonstrate()).action
                    if action is None:
                        break
                    if turn == 0:
                        targets.add(re.sub(r",.*", ")", action))  # the element, not the text
                    obs = await env.step(action)
                    if obs.done:
                        break
                solved += obs.reward > 0
            rows.append((task, solved, targets))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--seed-start", type=int, default=200_000, help="demonstration seeds")
    parser.add_argument("--tasks", default=",".join(sorted(SOLVERS)))
    args = parser.parse_args()
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    with start_local_env_pods(1, max_sessions=1, action_subsets=["miniwob_liu18"]) as urls:
        rows = asyncio.run(survey(urls[0], args.tasks.split(","), seeds))
    print(f"| task | solver success ({args.seeds} seeds) | distinct first-action targets |")
    print("|---|---|---|")
    for task, solved, targets in rows:
        print(f"| {task} | {solved}/{args.seeds} | {len(targets)} |")


if __name__ == "__main__":
    main()
