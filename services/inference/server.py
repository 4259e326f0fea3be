"""Entrypoint: vLLM's own OpenAI-compatible server, launched from our config, plus our routes.

Runs in the vLLM virtualenv (``.venv-vllm``): ``python -m services.inference --config FILE``.
It uses vLLM's launcher API (``build_async_engine_client``, ``build_app``, ``init_app_state``,
``serve_http``) exactly as ``vllm.entrypoints.launchers.api_server.entry`` does, and adds between
building and serving the app only what vLLM supports adding: a router (policy updates, ``/ready``)
and an ASGI middleware (version pinning). No inference code of ours runs in the engine.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Literal

from services.inference.config import InferenceConfig
from services.inference.policy import EngineRefused, PolicyManager
from services.inference.routes import router
from services.inference.validation import tensor_shapes

log = logging.getLogger("services.inference")


class VllmEngine:
    """``policy.Engine`` on top of vLLM's engine client and its model registry."""

    def __init__(self, engine_client, serving_models) -> None:
        self._client = engine_client
        self._models = serving_models

    async def load_adapter(self, name: str, path: str) -> None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        answer = await self._models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=path)
        )
        if isinstance(answer, ErrorResponse):
            raise EngineRefused(answer.error.message)

    async def unload_adapter(self, name: str) -> None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        answer = await self._models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        if isinstance(answer, ErrorResponse):
            raise EngineRefused(answer.error.message)

    async def pause(self, mode: Literal["wait", "abort"]) -> None:
        await self._client.pause_generation(mode=mode, clear_cache=True)

    async def resume(self) -> None:
        await self._client.resume_generation()

    async def reload_weights(self, path: str) -> None:
        await self._client.collective_rpc("reload_weights", kwargs={"weights_path": path})
        await self._client.collective_rpc("retie_word_embeddings")  # see worker.py

    async def reset_prefix_cache(self) -> None:
        if not await self._client.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache (blocks still held)")

    async def transfer_init(self, init_info: dict) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self._client.init_weight_transfer_engine(
            WeightTransferInitRequest(init_info=init_info)
        )

    async def transfer_start(self) -> None:
        await self._client.start_weight_update()

    async def transfer_update(self, update_info: dict | list) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        await self._client.update_weights(WeightTransferUpdateRequest(update_info=update_info))

    async def transfer_finish(self, version: str) -> None:
        await self._client.finish_weight_update(version)

    async def transfer_shutdown(self) -> None:
        await self._client.shutdown_weight_transfer_engine()


async def serve(config: InferenceConfig, args: argparse.Namespace, port_file: Path | None) -> None:
    import vllm.envs as envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    listen_address, sock = setup_server(args, reuse_port=False)
    args.port = sock.getsockname()[1]  # port 0 = the kernel picked one
    if port_file is not None:
        port_file.write_text(str(args.port))  # refused until serving; clients poll /ready
    base_shapes = tensor_shapes(Path(config.model))
    async with build_async_engine_client(args) as engine_client:
        supported_tasks = await engine_client.get_supported_tasks()
        app = build_app(args, supported_tasks, engine_client.model_config)
        await init_app_state(engine_client, app.state, args, supported_tasks)
        manager = PolicyManager(
            VllmEngine(engine_client, app.state.openai_serving_models),
            base_model=config.model,
            served_name=config.served_model_name,
            update_dir=Path(config.update_dir),
            lora_enabled=config.enable_lora,
            max_lora_rank=config.max_lora_rank,
            keep_adapter_versions=config.keep_adapter_versions,
            pause_mode=config.pause_mode,
            base_shapes=base_shapes,
            transfer_timeout_s=config.weight_transfer_timeout_s,
        )
        app.state.policy = manager
        app.include_router(router)
        log.info("serving %s as '%s' on %s", config.model, config.served_model_name, listen_address)
        shutdown = await serve_http(
            app,
            sock=sock,
            host=args.host,
            port=args.port,
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
        )
    try:
        await shutdown
    finally:
        sock.close()


def parse_vllm_args(config: InferenceConfig) -> argparse.Namespace:
    """vLLM's own argument parser and checks, fed from our config."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(description="browser-rl inference service"))
    args = parser.parse_args(config.vllm_args())
    validate_parsed_serve_args(args)
    return args


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--config", required=True, help="YAML with the inference config")
    cli.add_argument("--model", help="override config.model (a local folder)")
    cli.add_argument("--port", type=int, help="override config.port (0 = a free port)")
    cli.add_argument("--update-dir", help="override config.update_dir")
    cli.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    options = cli.parse_args(argv)
    config = InferenceConfig.from_yaml(options.config)
    overrides = {
        "model": options.model,
        "port": options.port,
        "update_dir": options.update_dir,
    }
    config = config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    config = InferenceConfig.model_validate(config.model_dump())
    os.environ.update(config.vllm_env())

    import uvloop
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    cli_env_setup()
    uvloop.run(serve(config, parse_vllm_args(config), options.port_file))
