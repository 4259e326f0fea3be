"""TRL GRPOTrainer wired to the rollout engine: config in, trained policy and checkpoints out.

TRL's ``rollout_func`` receives the step's prompts already repeated ``num_generations`` times
(one dataset row per GRPO sample, groups consecutive) and must return one sample per prompt. Each
row names a task page (task + seed); the rollout plays every sample as one env episode and
returns the episode's token ids, the generator's logprobs, an ``env_mask`` (1 = model token) and
the env reward plus per-episode facts as extra fields.

A sample whose episode was dropped after repeated infrastructure failures cannot be removed
(TRL's group shapes are fixed), so it is neutralised instead: its tokens are all masked (no
gradient) and its reward is its group's mean over the played episodes, so its advantage is zero
and it shifts no other sample's advantage. It is counted, never scored as a failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import ProgressCallback

from services.trainer.config import TrainerConfig, canonical_task
from services.trainer.curriculum import TaskCurriculum
from services.trainer.env_pool import EnvPool
from services.trainer.generation.base import GenerationBackend, SamplingParams
from services.trainer.metrics import TrainerMetrics
from services.trainer.prompts import PromptBuilder, resolve_format
from services.trainer.rollout import Episode, EpisodeRequest, GenerationBatcher, RolloutEngine

log = logging.getLogger(__name__)


# --- dataset: one row per GRPO group (TRL repeats it num_generations times) --------------------


def episode_prompt(request: EpisodeRequest) -> str:
    """The dataset ``prompt`` of a task page: a small JSON object (TRL carries it as text)."""
    return json.dumps({"task": request.task, "seed": request.seed}, sort_keys=True)


def parse_episode_prompt(prompt: Any) -> EpisodeRequest:
    try:
        data = json.loads(prompt)
        return EpisodeRequest(task=str(data["task"]), seed=int(data["seed"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"dataset prompt {prompt!r} is not a task page {{task, seed}}") from exc


def training_requests(cfg: TrainerConfig, count: int) -> list[EpisodeRequest]:
    """``count`` task pages: tasks round-robin (balanced), seeds drawn from the training range."""
    rng = random.Random(cfg.run.seed)
    tasks = [canonical_task(t) for t in cfg.tasks.train]
    start, size = cfg.tasks.seed_start, cfg.tasks.seed_count
    return [
        EpisodeRequest(task=tasks[i % len(tasks)], seed=start + rng.randrange(size))
        for i in range(count)
    ]


def build_dataset(cfg: TrainerConfig):
    from datasets import Dataset

    count = cfg.grpo.max_steps * cfg.grpo.prompts_per_step
    return Dataset.from_dict({"prompt": [episode_prompt(r) for r in training_requests(cfg, count)]})


# --- the rollout function -------------------------------------------------------------------


@dataclass
class StepStats:
    """What the last rollout did; printed per step and logged with TRL's metrics."""

    episodes: int = 0
    dropped: int = 0
    reward_mean: float = 0.0
    success_rate: float = 0.0
    turns_mean: float = 0.0
    invalid_rate: float = 0.0
    infra_retries: int = 0
    seconds: float = 0.0
    episodes_per_second: float = 0.0
    tokens_per_second: float = 0.0
    by_task: dict[str, tuple[int, int]] = field(default_factory=dict)
    """task -> (successes, played episodes), in first-seen order."""

    @classmethod
    def of(cls, episodes: Sequence[Episode], seconds: float) -> StepStats:
        played = [e for e in episodes if not e.dropped]
        n = max(len(played), 1)
        actions = sum(len(e.actions) for e in played)
        by_task: dict[str, tuple[int, int]] = {}
        for e in played:
            wins, total = by_task.get(e.task, (0, 0))
            by_task[e.task] = (wins + e.success, total + 1)
        return cls(
            episodes=len(played),
            dropped=len(episodes) - len(played),
            reward_mean=sum(e.reward for e in played) / n,
            success_rate=sum(e.success for e in played) / n,
            turns_mean=sum(e.turns for e in played) / n,
            invalid_rate=sum(e.invalid_actions for e in played) / max(actions, 1),
            infra_retries=sum(e.infra_retries for e in episodes),
            seconds=seconds,
            episodes_per_second=len(played) / seconds if seconds > 0 else 0.0,
            tokens_per_second=sum(e.generated_tokens for e in played) / seconds
            if seconds > 0
            else 0.0,
            by_task=by_task,
        )

    def task_summary(self) -> str:
        """``click-test 4/4 click-link 1/4``: what the step's groups had to learn from."""
        return " ".join(f"{task} {wins}/{total}" for task, (wins, total) in self.by_task.items())


class EventLoopThread:
    """A private asyncio loop in a daemon thread: sessions and the batcher outlive one step."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="rollout-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def to_trl_batch(prompts: Sequence[Any], episodes: Sequence[Episode], eos_id: int) -> dict:
    """Episodes → ``rollout_func`` output (see the module docstring for dropped samples)."""
    group_rewards: dict[str, list[float]] = {}
    group_prompt_ids: dict[str, list[int]] = {}
    for prompt, ep in zip(prompts, episodes, strict=True):
        if not ep.dropped:
            group_rewards.setdefault(prompt, []).append(ep.reward)
            group_prompt_ids.setdefault(prompt, ep.prompt_ids)
    out: dict[str, list] = {
        key: []
        for key in (
            "prompt_ids",
            "completion_ids",
            "logprobs",
            "env_mask",
            "env_reward",
            "task",
            "seed",
            "success",
            "turns",
            "invalid_actions",
            "infra_retries",
            "dropped",
        )
    }
    for prompt, ep in zip(prompts, episodes, strict=True):
        if ep.dropped:
            rewards = group_rewards.get(prompt, [0.0])
            reward = sum(rewards) / len(rewards)
            prompt_ids = group_prompt_ids.get(prompt, [eos_id])
            completion, logprobs, mask = [eos_id], [0.0], [0]
        else:
            reward, prompt_ids = ep.reward, ep.prompt_ids
            completion, logprobs, mask = ep.completion_ids, ep.logprobs, ep.env_mask
        out["prompt_ids"].append(list(prompt_ids))
        out["completion_ids"].append(list(completion))
        out["logprobs"].append(list(logprobs))
        out["env_mask"].append(list(mask))
        out["env_reward"].append(reward)
        out["task"].append(ep.task)
        out["seed"].append(ep.seed)
        out["success"].append(ep.success)
        out["turns"].append(ep.turns)
        out["invalid_actions"].append(ep.invalid_actions)
        out["infra_retries"].append(ep.infra_retries)
        out["dropped"].append(ep.dropped)
    return out


def env_reward(completions, env_reward, **_: Any) -> list[float]:
    """GRPO reward: the env's own binary task reward (computed by the rollout)."""
    return [float(r) for r in env_reward]


class BrowserRollout:
    """TRL ``rollout_func``: plays the prompts' episodes on env pods with the given backend."""

    def __init__(
        self,
        cfg: TrainerConfig,
        tokenizer,
        backend: GenerationBackend,
        *,
        endpoints: Sequence[str],
        metrics: TrainerMetrics | None = None,
        loop: EventLoopThread | None = None,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.metrics = metrics or TrainerMetrics()
        self.loop = loop or EventLoopThread()
        self.backend = backend
        self.last: StepStats = StepStats()
        self.policy_version = 0
        self.episode_log = (
            Path(cfg.run.output_dir) / "episodes.jsonl" if cfg.run.log_episodes else None
        )
        self.curriculum = TaskCurriculum(
            [canonical_task(t) for t in cfg.tasks.train], cfg.curriculum, seed=cfg.run.seed
        )
        self.prompts = PromptBuilder(
            tokenizer,
            fmt=resolve_format(tokenizer, cfg.model.prompt_format),
            action_subsets=cfg.prompt.action_subsets,
            axtree_max_tokens=cfg.prompt.axtree_max_tokens,
            compact_axtree=cfg.prompt.compact_axtree,
        )
        gen = cfg.generation
        self.sampling = SamplingParams(
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            stop=self.prompts.stop,
        )
        self.engine = self.loop.run(self._build_engine(list(endpoints)))

    async def _build_engine(self, endpoints: list[str]) -> RolloutEngine:
        env, gen = self.cfg.env, self.cfg.generation
        pool = EnvPool(
            endpoints,
            sessions_per_endpoint=env.sessions_per_endpoint,
            connect_timeout_s=env.connect_timeout_s,
            message_timeout_s=env.message_timeout_s,
            capacity_backoff_s=env.capacity_backoff_s,
        )
        remote = gen.backend == "remote"
        batcher = GenerationBatcher(
            self.backend,
            max_batch_size=gen.max_batch_size,
            wait_s=gen.batch_wait_ms / 1000,
            concurrency=gen.remote.max_concurrency if remote else 1,
        )
        return RolloutEngine(
            pool,
            batcher,
            self.prompts,
            sampling=self.sampling,
            max_turns=lambda task: self.cfg.tasks.turns_for(task),
            max_context_tokens=self.cfg.prompt.max_prompt_tokens,
            max_completion_tokens=self.cfg.grpo.max_completion_length,
            max_infra_retries=env.max_infra_retries,
            observer=self.metrics,
        )

    def set_endpoints(self, urls: Sequence[str]) -> None:
        """Live membership change (thread-safe): new pods join, removed ones drain."""
        self.loop.loop.call_soon_threadsafe(self.engine.pool.set_endpoints, list(urls))

    def play(self, requests: Sequence[EpisodeRequest]) -> list[Episode]:
        return self.loop.run(self.engine.run(list(requests)))

    def __call__(self, prompts: list[Any], trainer) -> dict:
        self.policy_version = trainer.state.global_step
        self.metrics.set_policy_version(self.policy_version)
        requests = self.curriculum.assign([parse_episode_prompt(p) for p in prompts])
        start = time.perf_counter()
        episodes = self.play(requests)
        seconds = time.perf_counter() - start
        self.curriculum.record(episodes)
        self.last = StepStats.of(episodes, seconds)
        self.metrics.rollout_done(episodes, seconds)
        self.metrics.curriculum_weights(self.curriculum.weights())
        _log_to_trl(trainer, self.last)
        if self.episode_log is not None:
            append_episode_log(self.episode_log, trainer.state.global_step + 1, episodes)
        eos = self.tokenizer.eos_token_id
        return to_trl_batch(prompts, episodes, eos if isinstance(eos, int) else eos[0])

    def close(self) -> None:
        try:
            self.loop.run(self.engine.pool.aclose(), timeout=10)
            self.loop.run(self.backend.close(), timeout=10)
        finally:
            self.loop.close()


def append_episode_log(path: Path, step: int, episodes: Sequence[Episode]) -> None:
    """One JSON line per training episode: what the policy did on which page, and the outcome.

    The per-step line shows rates; this file shows the actions behind them (e.g. which wrong
    element a task keeps clicking), so a run can be read afterwards without re-playing it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        for e in episodes:
            record = {"step": step, **e.facts(), "policy_versions": e.policy_versions}
            if e.drop_reason:
                record["drop_reason"] = e.drop_reason
            out.write(json.dumps(record) + "\n")


def _log_to_trl(trainer, stats: StepStats) -> None:
    """Add the rollout's figures to TRL's per-step metrics (averaged into each log line)."""
    bucket = getattr(trainer, "_metrics", {}).get("train")
    if bucket is None:
        return
    for key, value in (
        ("rollout/success_rate", stats.success_rate),
        ("rollout/episode_turns", stats.turns_mean),
        ("rollout/invalid_action_rate", stats.invalid_rate),
        ("rollout/dropped", stats.dropped),
        ("rollout/infra_retries", stats.infra_retries),
        ("rollout/seconds", stats.seconds),
        ("rollout/episodes_per_second", stats.episodes_per_second),
        ("rollout/tokens_per_second", stats.tokens_per_second),
    ):
        bucket[key].append(float(value))


# --- progress ---------------------------------------------------------------------------------


class StepLine(ProgressCallback):
    """The progress bar plus one compact line per step instead of the raw log dict."""

    def __init__(
        self,
        rollout: BrowserRollout,
        metrics: TrainerMetrics,
        every: int = 1,
        max_minutes: float | None = None,
    ) -> None:
        super().__init__()
        self.max_minutes = max_minutes
        self.deadline: float | None = None
        self.rollout = rollout
        self.metrics = metrics
        self.every = every
        self._step_start = 0.0
        self.update_seconds = 0.0
        self.lines: list[str] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.max_minutes is not None:
            self.deadline = time.monotonic() + self.max_minutes * 60
        return super().on_train_begin(args, state, control, **kwargs)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()
        return super().on_step_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        total = time.perf_counter() - self._step_start
        self.update_seconds = max(total - self.rollout.last.seconds, 0.0)
        self.metrics.update_done(state.global_step, self.update_seconds, {})
        over_budget = self.deadline is not None and time.monotonic() > self.deadline
        if over_budget and not control.should_training_stop:
            log.info("run.max_train_minutes reached after step %d: stopping", state.global_step)
            control.should_training_stop = True
        if over_budget or (state.max_steps and state.global_step >= state.max_steps):
            control.should_save = True  # a checkpoint at the end, beside every save_steps
        return super().on_step_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        for key, gauge in (
            ("loss", self.metrics.loss),
            ("kl", self.metrics.kl),
            ("grad_norm", self.metrics.grad_norm),
        ):
            if isinstance(logs.get(key), (int, float)):
                gauge.set(logs[key])
        if "loss" not in logs or state.global_step % self.every:
            return
        s = self.rollout.last
        line = (
            f"step {state.global_step}/{state.max_steps} | {time.strftime('%H:%M:%S')} | "
            f"reward {s.reward_mean:.2f} | "
            f"success {s.success_rate:.2f} | turns {s.turns_mean:.1f} | "
            f"invalid {s.invalid_rate:.2f} | rollout {s.seconds:.1f}s "
            f"({s.episodes_per_second:.2f} ep/s) | update {self.update_seconds:.1f}s | "
            f"loss {logs.get('loss', 0.0):.4f} | kl {logs.get('kl', 0.0):.4f}"
            + (f" | dropped {s.dropped} retries {s.infra_retries}" if s.infra_retries else "")
            + (f" | {s.task_summary()}" if s.by_task else "")
        )
        self.lines.append(line)
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


# --- building and running the trainer ---------------------------------------------------------


def load_policy(cfg: TrainerConfig):
    """(model, tokenizer, folder) for ``model.source``, float32 unless configured otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.models import resolve_model

    folder = resolve_model(cfg.model.source, cfg.model.cache_dir.expanduser())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, cfg.model.dtype))
    return model, tokenizer, folder


def grpo_args(cfg: TrainerConfig):
    """``GRPOConfig`` from our config: one rollout of ``prompts_per_step × num_generations``
    episodes per optimizer step, split into micro-batches of ``micro_batch_size`` samples."""
    from trl import GRPOConfig

    g = cfg.grpo
    samples = g.prompts_per_step * g.num_generations
    accumulation = samples // g.micro_batch_size
    return GRPOConfig(
        output_dir=str(cfg.run.output_dir),
        seed=cfg.run.seed,
        max_steps=g.max_steps,
        per_device_train_batch_size=g.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        num_generations=g.num_generations,
        learning_rate=g.learning_rate,
        lr_scheduler_type=g.lr_scheduler_type,
        warmup_steps=g.warmup_steps,
        weight_decay=g.weight_decay,
        max_grad_norm=g.max_grad_norm,
        loss_type=g.loss_type,
        beta=g.beta,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        num_iterations=g.num_iterations,
        scale_rewards=g.scale_rewards,
        max_completion_length=g.max_completion_length,
        # TRL scores tokens under softmax(logits / temperature): the sampling temperature.
        temperature=cfg.generation.temperature,
        use_vllm=False,
        use_cpu=cfg.use_cpu,
        bf16=cfg.model.dtype == "bfloat16",
        fp16=cfg.model.dtype == "float16",
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.checkpoint.save_steps,
        save_total_limit=cfg.checkpoint.save_total_limit,
        push_to_hub=cfg.checkpoint.push_to_hub,
        hub_model_id=cfg.checkpoint.hub_model_id,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=False,
    )


def lora_config(cfg: TrainerConfig):
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def make_backend(cfg: TrainerConfig, trainer_ref: list, tokenizer) -> GenerationBackend:
    """The configured generation backend; the local one samples from the model being trained."""
    version = lambda: trainer_ref[0].state.global_step if trainer_ref else 0  # noqa: E731
    if cfg.generation.backend == "remote":
        from services.trainer.generation.remote import RemoteBackend

        return RemoteBackend.from_config(cfg.generation.remote, policy_version=version)
    from services.trainer.generation.local import LocalBackend

    def current_model():
        trainer = trainer_ref[0]
        return trainer.accelerator.unwrap_model(trainer.model)

    return LocalBackend(current_model, tokenizer, policy_version=version)


@dataclass
class Training:
    """A built trainer and the parts around it (``close`` when done)."""

    trainer: Any
    rollout: BrowserRollout
    metrics: TrainerMetrics
    progress: StepLine
    tokenizer: Any
    model_folder: Path | None

    def close(self) -> None:
        self.rollout.close()


def build_training(
    cfg: TrainerConfig,
    endpoints: Sequence[str],
    *,
    model=None,
    tokenizer=None,
    metrics: TrainerMetrics | None = None,
) -> Training:
    """A ready ``GRPOTrainer`` (model loaded unless given) with the env rollout plugged in."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOTrainer

    if cfg.use_cpu:
        score_only_completion_tokens_on_cpu()

    folder = None
    if model is None:
        model, tokenizer, folder = load_policy(cfg)
    elif tokenizer is None:
        raise ValueError("build_training: a model needs its tokenizer")
    metrics = metrics or TrainerMetrics()
    trainer_ref: list = []
    backend = make_backend(cfg, trainer_ref, tokenizer)
    rollout = BrowserRollout(cfg, tokenizer, backend, endpoints=endpoints, metrics=metrics)
    try:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[env_reward],
            args=grpo_args(cfg),
            train_dataset=build_dataset(cfg),
            processing_class=tokenizer,
            peft_config=lora_config(cfg),
            rollout_func=rollout,
        )
    except Exception:
        rollout.close()
        raise
    trainer_ref.append(trainer)
    progress = StepLine(
        rollout, metrics, every=cfg.run.log_every_steps, max_minutes=cfg.run.max_train_minutes
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(progress)
    if cfg.inference.enabled:
        trainer.add_callback(_policy_sync_callback(cfg, trainer, backend))
    return Training(trainer, rollout, metrics, progress, tokenizer, folder)


def score_only_completion_tokens_on_cpu() -> bool:
    """Make TRL's fused LM head score only the completion positions on CPU, as it does on GPUs.

    TRL 1.16 scores the completion tokens' log-probabilities through a chunked LM-head kernel. On
    Triton devices it feeds the kernel only the positions that carry a label; elsewhere it feeds
    every position of prompt + completion (to keep tile shapes fixed for compilers) and discards
    the prompt's results. With Gemma's 262k-token vocabulary and a few-shot prompt of ~400 tokens
    that wastes most of a CPU update (the results are identical: the prompt positions are masked
    either way; ``test_cpu_scoring_patch_keeps_the_logprobs`` checks it). The switch is TRL's own
    ``compact`` branch, selected by ``trl.trainer.utils._use_triton``; the kernel itself still
    takes its CPU path (it reads its own module's ``_use_triton``). Returns whether it applied.
    """
    import trl
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None or getattr(original, "_browser_rl_patched", False):
        return original is not None
    if trl.__version__ != "1.16.0":
        log.warning(
            "TRL %s: not patching its CPU LM-head scoring (written for 1.16.0)", trl.__version__
        )
        return False

    def use_compact_scoring(device) -> bool:
        return device.type == "cpu" or original(device)

    use_compact_scoring._browser_rl_patched = True
    trl_utils._use_triton = use_compact_scoring
    return True


def _policy_sync_callback(cfg: TrainerConfig, trainer, backend: GenerationBackend):
    """The inference owner's callback that pushes new weights after optimizer steps."""
    from services.trainer import policy_sync

    return policy_sync.build_callback(cfg.inference, trainer=trainer, backend=backend)


def resume_target(cfg: TrainerConfig) -> str | bool | None:
    """``checkpoint.resume_from_checkpoint`` checked up front (True: newest in output_dir)."""
    target = cfg.checkpoint.resume_from_checkpoint
    if target is True:
        from transformers.trainer_utils import get_last_checkpoint

        out = cfg.run.output_dir
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            log.warning("resume_from_checkpoint: no checkpoint in %s yet, starting fresh", out)
        return last
    if isinstance(target, str) and not Path(target).is_dir():
        raise FileNotFoundError(f"checkpoint.resume_from_checkpoint: {target} is not a folder")
    return target or None


def run_training(training: Training, cfg: TrainerConfig) -> Path:
    """Train to ``max_steps`` (resuming if configured); save the final policy; its folder."""
    training.trainer.train(resume_from_checkpoint=resume_target(cfg))
    final = cfg.run.output_dir / "final"
    training.trainer.save_model(str(final))
    training.tokenizer.save_pretrained(str(final))
    return final
