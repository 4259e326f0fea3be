"""Small real artefacts for the fast tests: safetensors files shaped like a model and an adapter.

The engine double (``RecordingEngine``) stands in for vLLM where vLLM cannot be imported (the main
virtualenv has no vLLM); the real engine is exercised by the ``vllm``-marked tests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import Request
from fastapi.responses import JSONResponse
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
        self.loaded: set[str] = set()
        """Adapter names vLLM would know (loaded, not unloaded)."""

    async def load_adapter(self, name: str, path: str) -> None:
        from services.inference.policy import EngineRefused

        self.calls.append(("load_adapter", name, path))
        if self.refuse:
            raise EngineRefused(self.refuse)
        self.loaded.add(name)

    async def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload_adapter", name))
        self.loaded.discard(name)

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PolicyService:
    """Our inference routes and version middleware on a real loopback HTTP server, the engine
    double behind them, and an echo ``/v1/completions`` in place of vLLM's (the completion is
    the prompt's last ids + 1, under the model name asked for; an unknown name gets vLLM's 404)."""

    url: str
    engine: RecordingEngine
    manager: Any
    server: Any
    thread: threading.Thread
    completions: list[dict] = field(default_factory=list)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_policy_service(port: int, base_model: Path, folder: Path) -> PolicyService:
    import uvicorn
    from fastapi import FastAPI

    from services.inference.policy import PolicyManager
    from services.inference.routes import PolicyVersionMiddleware, router
    from services.inference.validation import tensor_shapes

    engine = RecordingEngine()
    manager = PolicyManager(
        engine,
        base_model=str(base_model),
        served_name="policy",
        update_dir=folder / f"service-{port}",
        lora_enabled=True,
        max_lora_rank=16,
        keep_adapter_versions=2,
        pause_mode="wait",
        base_shapes=tensor_shapes(base_model),
    )
    app = FastAPI()
    app.state.policy = manager
    app.include_router(router)
    app.add_middleware(PolicyVersionMiddleware)
    seen: list[dict] = []

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "policy", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        model = body.get("model")
        if model not in {None, "policy", *engine.loaded}:
            error = {"message": f"The model `{model}` does not exist.", "code": 404}
            return JSONResponse({"error": error}, status_code=404)
        ids = [i + 1 for i in body["prompt"][-3:]]
        choice = {"index": 0, "text": "click('13')", "finish_reason": "stop", "token_ids": ids}
        choice["logprobs"] = {"tokens": ["a"] * len(ids), "token_logprobs": [-0.1] * len(ids)}
        reply = {"id": "x", "object": "text_completion", "model": model, "choices": [choice]}
        return JSONResponse(reply)

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return PolicyService(f"http://127.0.0.1:{port}", engine, manager, server, thread, seen)
