"""InferenceConfig: YAML + environment in, vLLM's own arguments out; bad values fail at load."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.inference.config import InferenceConfig


def test_yaml_with_an_inference_server_section_and_env_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  server:\n    model: /models/m\n    max_model_len: 512\n")
    config = InferenceConfig.from_yaml(
        path, env={"INFERENCE_PORT": "9100", "INFERENCE_ENABLE_PREFIX_CACHING": "false"}
    )
    assert (config.model, config.max_model_len, config.port) == ("/models/m", 512, 9100)
    assert config.enable_prefix_caching is False


def test_vllm_arguments_cover_every_setting():
    config = InferenceConfig(model="/m", dtype="float32", max_lora_rank=16, max_loras=2)
    args = config.vllm_args()
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert pairs["--model"] == "/m" and pairs["--served-model-name"] == "policy"
    assert "--enable-lora" in args and args[args.index("--max-lora-rank") + 1] == "16"
    assert "--enable-prefix-caching" in args and "--enforce-eager" in args
    assert args[args.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert args[args.index("--middleware") + 1].endswith("routes.PolicyVersionMiddleware")
    assert "--api-key" not in args  # the key travels by environment, never on the command line
    assert InferenceConfig(model="/m", enable_lora=False).vllm_args().count("--enable-lora") == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_lora_rank", 12, "max_lora_rank must be one of"),
        ("pause_mode", "keep", "Input should be 'wait' or 'abort'"),
        ("gpu_memory_utilization", 1.5, "less than or equal to 1"),
        ("surprise", 1, "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_refused_with_the_reason(field, value, message):
    with pytest.raises(ValidationError, match=message):
        InferenceConfig.model_validate({"model": "/m", field: value})


def test_api_key_comes_from_the_named_variable(monkeypatch):
    config = InferenceConfig(model="/m", api_key_env="TEST_INFERENCE_KEY")
    monkeypatch.delenv("TEST_INFERENCE_KEY", raising=False)
    with pytest.raises(ValueError, match="TEST_INFERENCE_KEY"):
        config.vllm_env()
    monkeypatch.setenv("TEST_INFERENCE_KEY", "s3cret")
    assert config.vllm_env()["VLLM_API_KEY"] == "s3cret"
