"""Configuration of the inference service: what vLLM serves and how policy updates land.

One pydantic model, loadable from YAML (``InferenceConfig.from_yaml``) with environment overrides
``INFERENCE_<FIELD>`` (e.g. ``INFERENCE_PORT=8000``; the rule every service shares,
``services/common/settings.py``), so the same file works locally and in a pod.
The API key itself never sits in the file: ``api_key_env`` names the variable that holds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.settings import deep_merge, environ_overrides

# vLLM accepts only these LoRA ranks (``--max-lora-rank``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ENV_PREFIX = "INFERENCE_"


class InferenceConfig(BaseModel):
    """What our entrypoint passes to vLLM's OpenAI-compatible server, plus the update policy."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        ...,
        description="Local folder of the base model (HF layout, safetensors). No hub downloads.",
    )
    served_model_name: str = Field(
        default="policy",
        description=(
            "Name clients put in `model`: always the newest policy version. Adapter versions are "
            "also addressable as '<name>-v<version>' ('-r<k>' appended after the k-th trainer "
            "restart, so a repeated version never reuses a name)."
        ),
    )
    host: str = Field(default="127.0.0.1", description="Bind address (0.0.0.0 in a pod).")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Weight/activation dtype inside vLLM."
    )
    max_model_len: int = Field(default=2048, ge=16, description="Prompt + completion tokens.")
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="Fraction of GPU memory vLLM may take (GPU only)."
    )
    cpu_kvcache_space_gib: int = Field(
        default=1,
        ge=1,
        description="KV cache size on the CPU build (VLLM_CPU_KVCACHE_SPACE); keep it small.",
    )
    enable_prefix_caching: bool = Field(default=True, description="Reuse KV of shared prefixes.")
    enforce_eager: bool = Field(
        default=True, description="Skip graph capture/compilation: faster start, needed on CPU."
    )
    max_num_seqs: int = Field(default=64, ge=1, description="Concurrent sequences per step.")
    seed: int = Field(default=0, description="vLLM's sampling seed.")

    enable_lora: bool = Field(default=True, description="Serve LoRA adapters (adapter updates).")
    max_lora_rank: int = Field(default=16, description="Largest adapter rank accepted.")
    max_loras: int = Field(default=2, ge=1, description="Adapters active in one batch.")
    max_cpu_loras: int = Field(default=4, ge=1, description="Adapters cached in host memory.")

    update_dir: str = Field(
        default="runs/inference",
        description=(
            "Folder owned by the service: each adapter version is copied into its own new "
            "sub-folder here (the prefix cache keys on the adapter path)."
        ),
    )
    keep_adapter_versions: int = Field(
        default=2,
        ge=1,
        description=(
            "Adapter versions kept loaded (each answers to its exact name) and on disk, the "
            "newest ones. A trainer with rollout.max_staleness k pins episodes to the version "
            "they started on: keep at least k + 1, and max_loras at least k + 2."
        ),
    )
    pause_mode: Literal["wait", "abort"] = Field(
        default="wait",
        description=(
            "Full updates: 'wait' lets running generations finish on the old weights, 'abort' "
            "ends them (the client sees finish_reason 'abort'). Never 'keep': a sequence must "
            "not switch weights half-way."
        ),
    )
    weight_transfer_backend: Literal["nccl"] | None = Field(
        default=None,
        description="Enable vLLM's native weight transfer (needs GPUs on both sides).",
    )
    weight_transfer_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="A native transfer with no call for this long is abandoned (its trainer "
        "died): generation resumes if no weight was written yet, else the server is marked "
        "failed (mixed weights) and gets replaced.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the API key; None = no authentication.",
    )
    extra_vllm_args: list[str] = Field(
        default_factory=list, description="Further vLLM CLI arguments, passed unchanged."
    )

    @model_validator(mode="after")
    def _check_rank(self) -> InferenceConfig:
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS}")
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras")
        return self

    @classmethod
    def from_mapping(
        cls, data: dict[str, Any], env: dict[str, str] | None = None
    ) -> InferenceConfig:
        """Build from a mapping; ``INFERENCE_<FIELD>`` variables in ``env`` override it."""
        environ = env if env is not None else os.environ
        return cls.model_validate(deep_merge(data, environ_overrides(ENV_PREFIX, environ, cls)))

    @classmethod
    def from_yaml(cls, path: str | Path, env: dict[str, str] | None = None) -> InferenceConfig:
        """Load a YAML file: either the config itself or a file with an ``inference:`` section."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
        section = data.get("inference", data)
        server = section.get("server", section) if isinstance(section, dict) else section
        if not isinstance(server, dict):
            raise ValueError(f"{path}: the inference config must be a mapping")
        return cls.from_mapping(server, env)

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"api_key_env={self.api_key_env} but that variable is empty or unset")
        return key

    def vllm_args(self) -> list[str]:
        """vLLM's own CLI arguments for this config (the API key travels by environment)."""
        args = [
            "--model",
            self.model,
            "--served-model-name",
            self.served_model_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--gpu-memory-utilization",
            str(self.gpu_memory_utilization),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--seed",
            str(self.seed),
            "--enable-prefix-caching"
            if self.enable_prefix_caching
            else "--no-enable-prefix-caching",
        ]
        # Log-probs of the distribution actually sampled (temperature and top-p applied), as
        # the trainer scores tokens: the behaviour log-probs its off-policy correction needs.
        # Greedy requests get the raw ones, which are the same.
        args += ["--logprobs-mode", "processed_logprobs"]
        # Our version pinning, through vLLM's supported middleware hook.
        args += ["--middleware", "services.inference.routes.PolicyVersionMiddleware"]
        args += ["--worker-extension-cls", "services.inference.worker.PolicyWorkerExtension"]
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.enable_lora:
            args += [
                "--enable-lora",
                "--max-lora-rank",
                str(self.max_lora_rank),
                "--max-loras",
                str(self.max_loras),
                "--max-cpu-loras",
                str(self.max_cpu_loras),
            ]
        if self.weight_transfer_backend:
            args += ["--weight-transfer-config", f'{{"backend": "{self.weight_transfer_backend}"}}']
        return args + list(self.extra_vllm_args)

    def vllm_env(self) -> dict[str, str]:
        """Environment vLLM needs for this config."""
        env = {"VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kvcache_space_gib)}
        if key := self.api_key():
            env["VLLM_API_KEY"] = key
        return env
