"""Evaluation: a policy's success rate on held-out seeds, through the trainer's own rollout stack.

Protocol (BrowserGym's MiniWoB protocol, the one behind the published numbers, by default): one
episode per (task, seed), at most ``eval.max_turns`` = 10 steps, binary reward (the task's own
check), a task's score is its success rate, the overall score the mean over tasks. Decoding is
greedy unless ``eval.temperature`` is set. Episodes run through the same rollout stack as
training (same prompts, parser, env pool, timeouts and retries), so what is measured is what is
trained.

Seed split (held-out seeds are never trained on), defined once by the trainer config: training
draws task seeds from ``[tasks.seed_start, tasks.seed_start + tasks.seed_count)`` = ``[0, 100000)``
by default; evaluation uses ``eval.seed_start + k`` for ``k < eval.seeds_per_task``, from
``1000000``; the config refuses ranges that overlap.

Modules: ``report.py`` (scores, eval.json/eval.md), ``run.py`` (measuring policies), ``cli.py``.
"""
