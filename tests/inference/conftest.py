"""Fixtures of the ``vllm``-marked tests: real models on disk and real vLLM CPU servers.

Servers are module-scoped (one start per model, ~1 min on 2 cores) and always stopped; the KV
cache is kept at 1 GiB because the machine is shared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inference.config import InferenceConfig


@pytest.fixture(scope="module")
def tiny_lfm2(tmp_path_factory) -> Path:
    from services.trainer.models import build_random_model

    return build_random_model(
        "lfm2", tmp_path_factory.mktemp("lfm2-tiny"), size="tiny", chat_template=False
    )


@pytest.fixture(scope="module")
def gemma() -> Path:
    from services.trainer.models import resolve_model

    return resolve_model("pypi:gemma3-270m")


def serve(model: Path, update_dir: Path, port: int = 0, **overrides):
    """Context manager: a real vLLM server on loopback (``port`` 0: a free one), float32 for HF
    parity."""
    from services.inference.local import start_local_inference

    settings = {"max_model_len": 512, "max_lora_rank": 8, **overrides}
    config = InferenceConfig(
        model=str(model),
        dtype="float32",
        cpu_kvcache_space_gib=1,
        update_dir=str(update_dir),
        **settings,
    )
    update_dir.mkdir(parents=True, exist_ok=True)
    return start_local_inference(config, log_file=update_dir / "server.log", port=port)


@pytest.fixture(scope="module")
def client(server):
    """The trainer's policy-update client against the module's ``server`` fixture."""
    from services.trainer.policy_sync import PolicyClient

    policy = PolicyClient(server)
    yield policy
    policy.close()
