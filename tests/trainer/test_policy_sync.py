"""policy_sync: the trainer pushes real PEFT adapters / merged checkpoints over real HTTP.

The service side is our real routes and validation served by uvicorn; only vLLM's engine is
replaced by the recording double (vLLM is not importable here: see tests/inference for the
``vllm``-marked end-to-end tests).
"""

import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvicorn
from fastapi import FastAPI

from services.inference.policy import PolicyManager
from services.inference.routes import router
from services.inference.validation import tensor_shapes
from services.trainer.config import InferenceConfig
from services.trainer.policy_sync import PolicySyncError, build_callback
from tests.inference.fakes import RecordingEngine


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    from services.trainer.models import build_random_model

    return build_random_model("lfm2", tmp_path_factory.mktemp("base"), size="tiny")


@pytest.fixture(scope="module")
def peft_model(base_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "w1"])
    return get_peft_model(model, lora)


@pytest.fixture
def service(base_model, tmp_path):
    """Our update routes on a real loopback HTTP server, with the engine double behind them."""
    engine = RecordingEngine()
    manager = PolicyManager(
        engine,
        base_model=str(base_model),
        served_name="policy",
        update_dir=tmp_path / "service",
        lora_enabled=True,
        max_lora_rank=16,
        keep_adapter_versions=2,
        pause_mode="wait",
        base_shapes=tensor_shapes(base_model),
    )
    app = FastAPI()
    app.state.policy = manager
    app.include_router(router)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{sock.getsockname()[1]}", engine=engine, manager=manager
    )
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def step(callback, model, global_step: int) -> None:
    state = SimpleNamespace(global_step=global_step, is_world_process_zero=True)
    callback.on_step_end(args=None, state=state, control=None, model=model)


def test_adapter_upload_every_n_steps_tags_versions_with_the_global_step(service, peft_model):
    callback = build_callback(
        InferenceConfig(enabled=True, base_url=service.url, sync_every_steps=2, mode="adapter")
    )
    for global_step in (1, 2, 3, 4):
        step(callback, peft_model, global_step)
    assert callback.pusher.transport == "upload"
    loads = [call[1] for call in service.engine.calls if call[0] == "load_adapter"]
    assert loads == ["policy-v2", "policy-v4"]  # real PEFT files passed the service's checks
    assert service.manager.status().version == 4 and callback.pushed_version == 4
    assert callback.last_result.kind == "adapter"


def test_adapter_through_a_shared_dir_is_pruned_to_the_newest(service, peft_model, tmp_path):
    shared = tmp_path / "shared"
    callback = build_callback(
        InferenceConfig(enabled=True, base_url=service.url, mode="adapter", shared_dir=shared,
                        extra={"keep_versions": 2})
    )  # fmt: skip
    for global_step in (1, 2, 3):
        step(callback, peft_model, global_step)
    assert callback.pusher.transport == "shared_dir"
    assert sorted(p.name for p in (shared / "adapter").iterdir()) == ["v00000002", "v00000003"]
    assert service.manager.status().adapter == "policy-v3"


def test_full_mode_writes_a_merged_checkpoint_the_service_accepts(service, peft_model, tmp_path):
    callback = build_callback(
        InferenceConfig(enabled=True, base_url=service.url, mode="full", shared_dir=tmp_path / "s")
    )
    step(callback, peft_model, 1)
    reload = [call for call in service.engine.calls if call[0] == "reload_weights"]
    assert reload and Path(reload[0][1]).name == "v00000001"
    assert "lora_A" not in str(sorted(tensor_shapes(Path(reload[0][1]))))
    assert service.manager.status().kind == "full"
    assert hasattr(peft_model, "peft_config")  # the trainer's model is left as it was


def test_refused_pushes_are_logged_then_stop_training(service, peft_model):
    callback = build_callback(
        InferenceConfig(enabled=True, base_url=service.url, extra={"max_consecutive_failures": 2})
    )
    service.engine.refuse = "adapter broken"
    step(callback, peft_model, 1)  # first refusal: logged, training goes on
    assert callback.failures == 1 and service.manager.status().version == 0
    with pytest.raises(PolicySyncError, match="ENGINE_ERROR: vLLM refused the adapter") as error:
        step(callback, peft_model, 2)
    assert error.value.status == 500


def test_unreachable_service_is_a_clear_error(peft_model):
    callback = build_callback(
        InferenceConfig(
            enabled=True, base_url="http://127.0.0.1:9", extra={"max_consecutive_failures": 1}
        )
    )
    with pytest.raises(PolicySyncError, match="ConnectError"):
        step(callback, peft_model, 1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "full"}, "needs inference.shared_dir"),
        ({"mode": "full", "extra": {"transport": "upload"}}, "too big to upload"),
        ({"mode": "adapter", "extra": {"transport": "nccl"}}, "needs inference.mode 'full'"),
        ({"extra": {"api_key_env": "NO_SUCH_KEY_VAR"}}, "NO_SUCH_KEY_VAR is not set"),
        ({"extra": {"surprise": 1}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_sync_settings_fail_when_the_callback_is_built(fields, message):
    with pytest.raises(ValueError, match=message):
        build_callback(InferenceConfig(enabled=True, **fields))
