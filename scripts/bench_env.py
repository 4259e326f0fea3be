"""Env pod benchmark: episodes/s and reset/step latency, our pod vs the upstream design.

    .venv/bin/python scripts/bench_env.py --out runs/bench_env.json

For click-test (scripted solver) and book-flight (scripted form filling, then booking the first
flight; up to 6 steps) at 1, 2, 4, 8 concurrent sessions:

* ``service``: one env pod (``python -m services.env``, a browser thread per session, pages reused
  across episodes), driven over WebSocket by ``BrowserEnvClient`` sessions.
* ``baseline``: the design upstream's OpenEnv BrowserGym server uses: BrowserGym's ``BrowserEnv``,
  ``env.reset()`` per episode (relaunches Chromium and the chat browser), task defaults
  (slow_mo 100 ms, 0.5 s pre-observation delay), every session's calls on ONE thread. The only
  change: the chat browser is pointed at Debian's Chromium, which upstream cannot find here.

Plus, on click-test, the alternatives we chose between (``--designs``): all sessions of a pod on
one browser thread (``browsers=1``), and one pod process per session (a worker process per
browser). Each run lasts ``--window-s`` seconds of new episodes (in-flight episodes finish);
episodes/s = episodes / elapsed. Latencies are measured by the client, p50/p95. CPU seconds of
the pod's Python process, Chromium and the Playwright driver are sampled per run to show where
the time goes. ``--soak-episodes N`` additionally plays N click-test episodes on one pod and
samples its memory.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from services.env.browser import BrowserWorker
from services.env.client import BrowserEnvClient
from services.env.config import DEFAULT_CHROMIUM_ARGS, EnvServerConfig
from services.env.episode import PageEpisode
from services.env.families import TaskCatalog, build_families
from services.env.families.miniwob import miniwob_file_url, oracle
from services.env.local import start_local_env_pods
from services.protocol.env import BrowserObservation, BrowserResetOptions

BOOK_FLIGHT_STEPS = 6


@dataclass
class Run:
    design: str
    task: str
    sessions: int
    episodes: int = 0
    successes: int = 0
    elapsed_s: float = 0.0
    reset_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    #: Mean seconds of a reset/step inside the pods (their histograms) and as the client saw
    #: it; the difference is protocol + queueing (JSON, WebSocket, event loop, thread hand-off).
    in_pod_s: dict[str, float] = field(default_factory=dict)

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict:
        return {
            "design": self.design,
            "task": self.task,
            "sessions": self.sessions,
            "episodes": self.episodes,
            "success_rate": round(self.successes / self.episodes, 3) if self.episodes else 0.0,
            "episodes_per_s": round(self.episodes_per_s, 3),
            "reset_p50_s": _pct(self.reset_s, 50),
            "reset_p95_s": _pct(self.reset_s, 95),
            "step_p50_s": _pct(self.step_s, 50),
            "step_p95_s": _pct(self.step_s, 95),
            "cpu_s": {k: round(v, 2) for k, v in self.cpu_s.items()},
            "in_pod_mean_s": self.in_pod_s,
            "client_mean_s": {
                "reset": round(statistics.fmean(self.reset_s), 4) if self.reset_s else 0.0,
                "step": round(statistics.fmean(self.step_s), 4) if self.step_s else 0.0,
            },
        }


def _pct(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 4)


# ---- policies (one per task, same code for both designs) -------------------------------------
def first_actions(obs: BrowserObservation) -> list[str]:
    if obs.task == "book-flight":
        return oracle.book_flight_actions(obs)
    return oracle.solve(obs)


def next_action(obs: BrowserObservation, plan: list[str], steps: int) -> str:
    """The scripted start, then (book-flight) book the first flight listed."""
    return plan[steps] if steps < len(plan) else oracle.book_first_flight(obs)


# ---- CPU accounting ----------------------------------------------------------------------------
def cpu_by_kind(pids: list[int]) -> dict[str, float]:
    """CPU seconds of these processes and their children: python, chromium, playwright-driver."""
    totals: dict[str, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                name = proc.name()
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            kind = "chromium" if "chrom" in name else "driver" if name == "node" else "python"
            totals[kind] = totals.get(kind, 0.0) + times.user + times.system
    return totals


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: max(0.0, after.get(k, 0.0) - before.get(k, 0.0)) for k in after}


# ---- our service ---------------------------------------------------------------------------------
async def _session(url: str, run: Run, task: str, deadline: float, seed0: int) -> None:
    """Play episodes until the deadline (at least one)."""
    async with BrowserEnvClient(url, message_timeout_s=120) as env:
        seed = seed0
        while seed == seed0 or time.perf_counter() < deadline:
            started = time.perf_counter()
            obs = await env.reset(task=task, seed=seed, max_steps=BOOK_FLIGHT_STEPS)
            run.reset_s.append(time.perf_counter() - started)
            plan = first_actions(obs)
            steps = 0
            while not obs.done:
                started = time.perf_counter()
                obs = await env.step(next_action(obs, plan, steps))
                run.step_s.append(time.perf_counter() - started)
                steps += 1
            run.episodes += 1
            run.successes += int((obs.reward or 0) > 0)
            seed += 1000


def pod_pids() -> list[int]:
    """Pids of the env pods this process started (the only ones running while it measures)."""
    pids = []
    for proc in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "services.env" in proc.cmdline():
                pids.append(proc.pid)
    return pids


def pod_latency_totals(urls: list[str]) -> dict[str, float]:
    """Sum and count of the pods' reset/step latency histograms."""
    totals: dict[str, float] = {}
    for url in urls:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            for kind in ("reset", "step"):
                for part in ("sum", "count"):
                    name = f"browserenv_{kind}_seconds_{part}"
                    if line.startswith(name + " "):
                        totals[f"{kind}_{part}"] = totals.get(f"{kind}_{part}", 0.0) + float(
                            line.split()[1]
                        )
    return totals


def run_service(urls: list[str], design: str, task: str, sessions: int, window_s: float) -> Run:
    run = Run(design, task, sessions)
    pids = pod_pids()

    async def main() -> None:
        warm_up = Run("", task, 0)  # one episode per session first: browsers up, pages warm
        await asyncio.gather(
            *(_session(urls[i % len(urls)], warm_up, task, 0.0, i) for i in range(sessions))
        )
        before, latency_before = cpu_by_kind(pids), pod_latency_totals(urls)
        started = time.perf_counter()
        deadline = started + window_s
        await asyncio.gather(
            *(_session(urls[i % len(urls)], run, task, deadline, i) for i in range(sessions))
        )
        run.elapsed_s = time.perf_counter() - started
        run.cpu_s = cpu_delta(before, cpu_by_kind(pids))
        latency = cpu_delta(latency_before, pod_latency_totals(urls))
        run.in_pod_s = {
            kind: round(latency[f"{kind}_sum"] / max(latency[f"{kind}_count"], 1), 4)
            for kind in ("reset", "step")
        }

    asyncio.run(main())
    return run


# ---- upstream baseline ---------------------------------------------------------------------------
@contextlib.contextmanager
def upstream_runnable_here(chromium: str):
    """Point every Playwright Chromium launch (incl. BrowserGym's chat browser) at Debian's."""
    from playwright.sync_api import BrowserType

    original = BrowserType.launch
    flags = [*DEFAULT_CHROMIUM_ARGS, "--no-sandbox"]

    def launch(self, *args, **kwargs):
        kwargs.setdefault("executable_path", chromium)
        kwargs["args"] = [*(kwargs.get("args") or []), *flags]
        return original(self, *args, **kwargs)

    BrowserType.launch = launch
    try:
        yield
    finally:
        BrowserType.launch = original


def run_baseline(task: str, sessions: int, window_s: float, chromium: str) -> Run:
    """N BrowserGym envs served round-robin by one thread, env.reset() for every episode.

    Call every run from the same thread: BrowserGym's global Playwright is bound to the thread
    that first used it (upstream's server has the same constraint, hence its single thread).
    """
    import browsergym.miniwob  # noqa: F401  (registers the tasks)
    import gymnasium as gym
    from browsergym.utils.obs import flatten_axtree_to_str

    run = Run("baseline", task, sessions)

    def to_obs(raw: dict) -> BrowserObservation:
        return BrowserObservation(
            goal=raw["goal"], axtree_txt=flatten_axtree_to_str(raw["axtree_object"]), task=task
        )

    with upstream_runnable_here(chromium):
        envs = [
            gym.make(
                f"browsergym/miniwob.{task}",
                headless=True,
                task_kwargs={"base_url": miniwob_file_url()},
            )
            for _ in range(sessions)
        ]
        state: list[dict] = [{"seed": i, "obs": None} for i in range(sessions)]

        def one_call(i: int, deadline: float) -> bool:
            """Advance session i by one protocol call; False when it is finished."""
            env, s = envs[i], state[i]
            if s["obs"] is None:
                if time.perf_counter() >= deadline and s["seed"] >= 1000:
                    return False  # past the window, and this session did an episode
                started = time.perf_counter()
                raw, _ = env.reset(seed=s["seed"])
                run.reset_s.append(time.perf_counter() - started)
                s["seed"] += 1000
                s["obs"], s["steps"] = to_obs(raw), 0
                s["plan"] = first_actions(s["obs"])
                return True
            steps = s["steps"]
            action = next_action(s["obs"], s["plan"], steps)
            started = time.perf_counter()
            raw, reward, terminated, _, _ = env.step(action)
            run.step_s.append(time.perf_counter() - started)
            s["steps"] = steps + 1
            s["obs"] = to_obs(raw)
            if terminated or s["steps"] >= BOOK_FLIGHT_STEPS:
                run.episodes += 1
                run.successes += int(reward > 0)
                s["obs"] = None
            return True

        def rounds(deadline: float) -> None:
            active = set(range(sessions))
            while active:
                for i in sorted(active):
                    if not one_call(i, deadline):
                        active.discard(i)

        before = cpu_by_kind([psutil.Process().pid])
        started = time.perf_counter()
        rounds(started + window_s)
        run.elapsed_s = time.perf_counter() - started
        run.cpu_s = cpu_delta(before, cpu_by_kind([psutil.Process().pid]))
        for env in envs:
            env.close()
    return run


# ---- in-process phase split ----------------------------------------------------------------------
def phase_split(config: EnvServerConfig, episodes: int = 30) -> dict[str, float]:
    """Median seconds per phase of click-test episodes run directly on one browser worker."""
    worker = BrowserWorker(0, config, lambda: None)
    try:
        catalog = TaskCatalog(build_families(config.task_families))
        episode = worker.submit(PageEpisode.create, worker, config, catalog).result()
        samples: dict[str, list[float]] = {}
        for seed in range(episodes):
            obs = worker.submit(
                episode.reset, BrowserResetOptions(task="click-test", seed=seed)
            ).result()
            for k, v in episode.timings.items():
                samples.setdefault(f"reset.{k}", []).append(v)
            worker.submit(episode.step, oracle.solve(obs)[0]).result()
            for k, v in episode.timings.items():
                samples.setdefault(f"step.{k}", []).append(v)
        return {k: round(statistics.median(v), 4) for k, v in samples.items()}
    finally:
        worker.stop()


# ---- soak ----------------------------------------------------------------------------------------
def soak(url: str, episodes: int, sessions: int = 2) -> list[dict]:
    pid = pod_pids()[0]
    samples: list[dict] = []
    done = 0

    def memory() -> dict:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        pss = 0  # proportional set size: shared pages counted once across Chromium's processes
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                pss += proc.memory_full_info().pss
        return {
            "episodes": done,
            "pod_rss_mib": round(root.memory_info().rss / 2**20, 1),
            "tree_pss_mib": round(pss / 2**20, 1),
            "processes": len(procs),
        }

    async def main() -> None:
        nonlocal done
        every = max(episodes // 10, 1)

        async def worker(index: int) -> None:
            nonlocal done
            async with BrowserEnvClient(url) as env:
                seed = index
                while done < episodes:
                    obs = await env.reset(task="click-test", seed=seed)
                    obs = await env.step(oracle.solve(obs)[0])
                    done += 1
                    seed += sessions
                    if done % every == 0:
                        samples.append(memory())
                        print(f"  soak {samples[-1]}", flush=True)

        samples.append(memory())
        await asyncio.gather(*(worker(i) for i in range(sessions)))

    asyncio.run(main())
    return samples


def _protocol_ms(row: dict) -> str:
    """Client-seen minus in-pod mean step latency: what the protocol and hand-offs cost."""
    if not row["in_pod_mean_s"]:
        return ""
    return f"{(row['client_mean_s']['step'] - row['in_pod_mean_s']['step']) * 1000:.1f}"


def _print_table(rows: list[dict], baseline: dict[tuple[str, int], float]) -> None:
    header = (
        f"{'design':<12}{'task':<13}{'sess':>5}{'eps':>6}{'eps/s':>8}{'x base':>8}"
        f"{'reset p50':>11}{'p95':>7}{'step p50':>10}{'p95':>7}{'succ':>6}"
        f"{'proto ms':>10}  cpu s (py/chromium/driver)"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        base = baseline.get((r["task"], r["sessions"]))
        ratio = f"{r['episodes_per_s'] / base:.1f}x" if base and r["design"] != "baseline" else ""
        cpu = r["cpu_s"]
        print(
            f"{r['design']:<12}{r['task']:<13}{r['sessions']:>5}{r['episodes']:>6}"
            f"{r['episodes_per_s']:>8.2f}{ratio:>8}{r['reset_p50_s']:>11.3f}{r['reset_p95_s']:>7.3f}"
            f"{r['step_p50_s']:>10.3f}{r['step_p95_s']:>7.3f}{r['success_rate']:>6.2f}"
            f"{_protocol_ms(r):>10}  "
            f"{cpu.get('python', 0):.1f}/{cpu.get('chromium', 0):.1f}/{cpu.get('driver', 0):.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench_env.json")
    parser.add_argument("--tasks", nargs="+", default=["click-test", "book-flight"])
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument(
        "--window-s", type=float, default=6.0, help="per run; book-flight gets twice this"
    )
    parser.add_argument("--designs", nargs="*", default=["one-thread", "processes"])
    parser.add_argument("--design-sessions", nargs="+", type=int, default=[2, 4])
    parser.add_argument(
        "--baseline-sessions",
        nargs="*",
        type=int,
        default=[1, 2, 4],
        help="the baseline serves every session on one thread, so it is flat in the session "
        "count; 8 sessions cost minutes (pass it explicitly to measure)",
    )
    parser.add_argument("--soak-episodes", type=int, default=0)
    args = parser.parse_args()
    config = EnvServerConfig()
    top = max(*args.sessions, 2)  # the soak plays on two sessions
    rows: list[dict] = []

    def window(task: str) -> float:
        return args.window_s * (2 if task == "book-flight" else 1)

    def record(run: Run) -> None:
        rows.append(run.summary())
        r = rows[-1]
        print(
            f"  {r['design']:<11} {r['task']:<12} x{r['sessions']}: {r['episodes_per_s']:.2f} eps/s"
            f" ({r['episodes']} episodes)",
            flush=True,
        )

    started = time.time()
    with start_local_env_pods(1, max_sessions=top, prewarm_browsers=top) as urls:
        for task in args.tasks:
            for n in args.sessions:
                record(run_service(urls, "service", task, n, window(task)))
        if args.soak_episodes:
            soak_samples = soak(urls[0], args.soak_episodes)
    if "one-thread" in args.designs:
        with start_local_env_pods(1, max_sessions=top, browsers=1) as urls:
            for n in args.design_sessions:
                record(run_service(urls, "one-thread", "click-test", n, args.window_s))
    if "processes" in args.designs:
        for n in args.design_sessions:
            with start_local_env_pods(n, max_sessions=1) as urls:
                record(run_service(urls, "processes", "click-test", n, args.window_s))
    if args.baseline_sessions:
        # Not the main thread: asyncio.run() left an event loop policy there that sync
        # Playwright refuses to share.
        with concurrent.futures.ThreadPoolExecutor(1, "baseline-executor") as executor:
            for task in args.tasks:
                for n in args.baseline_sessions:
                    record(
                        executor.submit(
                            run_baseline, task, n, window(task), config.chromium_path
                        ).result()
                    )
    phases = phase_split(config)

    baseline = {
        (r["task"], r["sessions"]): r["episodes_per_s"] for r in rows if r["design"] == "baseline"
    }
    print()
    _print_table(rows, baseline)
    print("\nclick-test phases in the pod (median s, one session, no protocol):")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    key = ("click-test", 2)
    service_2 = next(
        (
            r["episodes_per_s"]
            for r in rows
            if r["design"] == "service" and (r["task"], r["sessions"]) == key
        ),
        None,
    )
    if service_2 and key in baseline:
        print(f"\nclick-test at 2 sessions: service / baseline = {service_2 / baseline[key]:.1f}x")
    result = {
        "command": "make bench-env",
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
        "window_s": args.window_s,
        "rows": rows,
        "phases_click_test_s": phases,
        "seconds": round(time.time() - started, 1),
    }
    if args.soak_episodes:
        result["soak"] = soak_samples
        print("\nsoak (memory by episodes):")
        for s in soak_samples:
            print(f"  {s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
