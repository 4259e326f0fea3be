"""Small real artefacts for the fast tests: safetensors files shaped like a model and an adapter.

The engine double (``RecordingEngine``) stands in for vLLM where vLLM cannot be imported (the main
virtualenv has no vLLM); the real engine is exercised by the ``vllm``-marked tests.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN = 32
BASE_SHAPES = {
    "model.embed_tokens.weight": (100, HIDDEN),
    "model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.v_proj.weight": (16, HIDDEN),
    "model.layers.0.mlp.down_proj.weight": (HIDDEN, 64),
}


def write_checkpoint(folder: Path, shapes: dict[str, tuple[int, ...]] = BASE_SHAPES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()},
              str(folder / "model.safetensors"))  # fmt: skip
    return folder


def write_adapter(
    folder: Path,
    *,
    rank: int = 8,
    modules: tuple[str, ...] = ("self_attn.q_proj", "self_attn.v_proj"),
    override: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    """A PEFT-layout LoRA adapter for ``BASE_SHAPES``; ``override`` replaces tensor shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module in modules:
        out_features, in_features = BASE_SHAPES[f"model.layers.0.{module}.weight"]
        prefix = f"base_model.model.model.layers.0.{module}"
        tensors[f"{prefix}.lora_A.weight"] = torch.zeros(rank, in_features)
        tensors[f"{prefix}.lora_B.weight"] = torch.zeros(out_features, rank)
    for name, shape in (override or {}).items():
        tensors[name] = torch.zeros(shape)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": list(modules)}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


class RecordingEngine:
    """Records what the manager asks of vLLM; ``refuse``/``fail_reload`` make it say no."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.refuse: str | None = None
        self.fail_reload: str | None = None
        self.reload_started = asyncio.Event()
        self.reload_release: asyncio.Event | None = None

    async def load_adapter(self, name: str, path: str) -> None:
        from services.inference.policy import EngineRefused

        self.calls.append(("load_adapter", name, path))
        if self.refuse:
            raise EngineRefused(self.refuse)

    async def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload_adapter", name))

    async def pause(self, mode: str) -> None:
        self.calls.append(("pause", mode))

    async def resume(self) -> None:
        self.calls.append(("resume",))

    async def reload_weights(self, path: str) -> None:
        self.calls.append(("reload_weights", path))
        self.reload_started.set()
        if self.reload_release is not None:
            await self.reload_release.wait()
        if self.fail_reload:
            raise RuntimeError(self.fail_reload)

    async def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))

    async def transfer_init(self, init_info: dict) -> None:
        self.calls.append(("transfer_init", init_info))

    async def transfer_start(self) -> None:
        self.calls.append(("transfer_start",))

    async def transfer_update(self, update_info) -> None:
        self.calls.append(("transfer_update", update_info))

    async def transfer_finish(self, version: str) -> None:
        self.calls.append(("transfer_finish", version))

    async def transfer_shutdown(self) -> None:
        self.calls.append(("transfer_shutdown",))

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]
