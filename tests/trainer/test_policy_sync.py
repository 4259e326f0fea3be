"""policy_sync: the trainer pushes real PEFT adapters / merged checkpoints over real HTTP.

The service side is our real routes and validation served by uvicorn; only vLLM's engine is
replaced by the recording double (vLLM is not importable here: see tests/inference for the
``vllm``-marked end-to-end tests).
"""

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.inference.validation import tensor_shapes
from services.trainer.config import PolicySyncConfig
from services.trainer.policy_sync import PolicySyncError, build_callback, vllm_transfer_side
from tests.inference.fakes import free_port, serve_policy_service


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
    running = serve_policy_service(free_port(), base_model, tmp_path)
    yield running
    running.stop()


def step(callback, model, global_step: int) -> None:
    state = SimpleNamespace(global_step=global_step, is_world_process_zero=True)
    callback.on_step_end(args=None, state=state, control=None, model=model)


def test_adapter_upload_every_n_steps_tags_versions_with_the_global_step(service, peft_model):
    callback = build_callback(
        PolicySyncConfig(
            enabled=True, servers={"endpoints": [service.url]}, sync_every_steps=2, mode="adapter"
        )
    )
    for global_step in (1, 2, 3, 4):
        step(callback, peft_model, global_step)
    assert callback.pusher.transport == "upload"
    loads = [call[1] for call in service.engine.calls if call[0] == "load_adapter"]
    assert loads == ["policy-v2", "policy-v4"]  # real PEFT files passed the service's checks
    assert service.manager.status().version == 4 and callback.pushed_version == 4
    assert [r.kind for r in callback.last_result.accepted.values()] == ["adapter"]


def test_adapter_through_a_shared_dir_is_pruned_to_the_newest(service, peft_model, tmp_path):
    shared = tmp_path / "shared"
    callback = build_callback(
        PolicySyncConfig(
            enabled=True,
            servers={"endpoints": [service.url]},
            mode="adapter",
            shared_dir=shared,
            keep_versions=2,
        )
    )
    for global_step in (1, 2, 3):
        step(callback, peft_model, global_step)
    assert callback.pusher.transport == "shared_dir"
    assert sorted(p.name for p in (shared / "adapter").iterdir()) == ["v00000002", "v00000003"]
    assert service.manager.status().adapter == "policy-v3"


def test_full_mode_writes_a_merged_checkpoint_the_service_accepts(service, peft_model, tmp_path):
    callback = build_callback(
        PolicySyncConfig(
            enabled=True,
            servers={"endpoints": [service.url]},
            mode="full",
            shared_dir=tmp_path / "s",
        )
    )
    step(callback, peft_model, 1)
    reload = [call for call in service.engine.calls if call[0] == "reload_weights"]
    assert reload and Path(reload[0][1]).name == "v00000001"
    assert "lora_A" not in str(sorted(tensor_shapes(Path(reload[0][1]))))
    assert service.manager.status().kind == "full"
    assert hasattr(peft_model, "peft_config")  # the trainer's model is left as it was


def test_refused_pushes_are_logged_then_stop_training(service, peft_model):
    callback = build_callback(
        PolicySyncConfig(
            enabled=True, servers={"endpoints": [service.url]}, max_consecutive_refusals=2
        )
    )
    service.engine.refuse = "adapter broken"
    step(callback, peft_model, 1)  # first refusal: logged, training goes on
    assert callback.refusals == 1 and service.manager.status().version == 0
    with pytest.raises(PolicySyncError, match="ENGINE_ERROR: vLLM refused the adapter") as error:
        step(callback, peft_model, 2)
    assert error.value.status == 500


def test_unreachable_service_is_a_clear_error(peft_model):
    """Not answering is not refusing: the push waits (up to wait_ready_s), then says why."""
    callback = build_callback(
        PolicySyncConfig(
            enabled=True,
            servers={"endpoints": ["http://127.0.0.1:9"]},
            max_consecutive_refusals=1,
            wait_ready_s=2,
        )
    )
    started = time.monotonic()
    with pytest.raises(PolicySyncError, match="ConnectError") as error:
        step(callback, peft_model, 1)
    assert "unreachable" in str(error.value) and time.monotonic() - started >= 1.0
    assert callback.refusals == 0


def test_a_push_waits_for_a_service_that_comes_back(base_model, peft_model, tmp_path):
    """Transport failures are waited out (with back-off), not counted as refusals."""
    port = free_port()
    callback = build_callback(
        PolicySyncConfig(
            enabled=True, servers={"endpoints": [f"http://127.0.0.1:{port}"]}, wait_ready_s=60
        )
    )
    ready: list = []
    late = threading.Timer(
        2.0, lambda: ready.append(serve_policy_service(port, base_model, tmp_path))
    )
    late.start()
    try:
        step(callback, peft_model, 1)
    finally:
        late.cancel()
        for service in ready:
            service.stop()
    assert callback.pushed_version == 1 and callback.refusals == 0
    assert ready[0].manager.status().version == 1


def test_a_resumed_trainer_takes_the_service_back_to_its_own_version(service, peft_model):
    """The crash-loop of a resume: the service serves version 7 (pushed before the crash), the
    trainer resumed from checkpoint 5. At train begin it re-pushes 5 with restart; then 6."""
    ahead = build_callback(PolicySyncConfig(enabled=True, servers={"endpoints": [service.url]}))
    step(ahead, peft_model, 7)
    assert service.manager.status().version == 7
    resumed = build_callback(PolicySyncConfig(enabled=True, servers={"endpoints": [service.url]}))
    state = SimpleNamespace(global_step=5, is_world_process_zero=True)
    resumed.on_train_begin(args=None, state=state, control=None, model=peft_model)
    assert service.manager.status().version == 5
    step(resumed, peft_model, 6)
    assert service.manager.status().version == 6 and resumed.refusals == 0


def test_grpo_after_sft_sends_its_starting_policy_the_service_never_loaded(
    service, peft_model, tmp_path
):
    """A fresh trainer on a fresh service normally sends nothing at step 0; after the SFT stage
    the starting weights are not the ones the service loaded, so they go first (version 0)."""
    config = PolicySyncConfig(
        enabled=True, servers={"endpoints": [service.url]}, mode="full", shared_dir=tmp_path / "s"
    )
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    build_callback(config).on_train_begin(args=None, state=state, control=None, model=peft_model)
    assert not service.engine.calls
    after_sft = build_callback(config, push_at_start=True)
    after_sft.on_train_begin(args=None, state=state, control=None, model=peft_model)
    reload = [call for call in service.engine.calls if call[0] == "reload_weights"]
    assert [Path(call[1]).name for call in reload] == ["v00000000"]
    assert service.manager.status().kind == "full" and after_sft.pushed_version == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "full"}, "needs policy_sync.shared_dir"),
        ({"mode": "full", "transport": "upload"}, "too big to upload"),
        ({"mode": "adapter", "transport": "nccl"}, "needs policy_sync.mode 'full'"),
        (
            {
                "mode": "full",
                "transport": "nccl",
                "servers": {"endpoints": ["http://a", "http://b"]},
            },
            "nccl sends to one replica",
        ),
        ({"api_key_env": "NO_SUCH_KEY_VAR"}, "NO_SUCH_KEY_VAR is not set"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_sync_settings_fail_when_the_callback_is_built(fields, message):
    with pytest.raises(ValueError, match=message):
        build_callback(PolicySyncConfig(enabled=True, **fields))


def test_an_nccl_transfer_without_vllms_trainer_side_says_how_to_get_it(tmp_path):
    """The trainer's own environment has no vLLM (tests/inference/test_vllm_nccl_side.py loads
    it from a folder as the trainer image does)."""
    with pytest.raises(PolicySyncError, match=r"build the trainer image with NCCL_TRANSFER=true"):
        vllm_transfer_side(tmp_path / "nothing-here")
