"""Adapters and checkpoints are checked against the served model before vLLM sees them."""

from pathlib import Path

import pytest

from services.inference.validation import (
    UpdateRefused,
    tensor_shapes,
    validate_adapter,
    validate_checkpoint,
)
from services.protocol.inference import PolicyErrorCode
from tests.inference.fakes import BASE_SHAPES, write_adapter, write_checkpoint

BASE = {name: tuple(shape) for name, shape in BASE_SHAPES.items()}


def test_a_matching_adapter_passes(tmp_path: Path):
    info = validate_adapter(write_adapter(tmp_path / "a"), BASE, max_rank=16)
    assert info.rank == 8 and len(info.target_modules) == 2


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda d: write_adapter(d, rank=32), "rank 32 exceeds the server's max_lora_rank 16"),
        (
            lambda d: write_adapter(
                d,
                override={"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (8, 7)},
            ),
            "do not fit base model.layers.0.self_attn.q_proj.weight",
        ),
        (
            lambda d: write_adapter(
                d,
                override={
                    "base_model.model.model.layers.0.ghost.lora_A.weight": (8, 32),
                    "base_model.model.model.layers.0.ghost.lora_B.weight": (32, 8),
                },
            ),
            "targets a module the base model does not have",
        ),
        (
            lambda d: write_adapter(d, override={"base_model.model.lm_head.weight": (100, 32)}),
            "is not a lora_A/lora_B weight",
        ),
    ],
)
def test_bad_adapters_are_refused_with_the_reason(tmp_path: Path, build, message):
    folder = build(tmp_path / "a")
    with pytest.raises(UpdateRefused, match=message) as refused:
        validate_adapter(folder, BASE, max_rank=16)
    assert refused.value.code == PolicyErrorCode.INVALID_UPDATE


def test_missing_or_garbled_adapter_files_are_refused(tmp_path: Path):
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(UpdateRefused, match="not valid JSON"):
        validate_adapter(folder, BASE, max_rank=16)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(UpdateRefused, match=r"missing adapter_config\.json"):
        validate_adapter(folder, BASE, max_rank=16)
    other = write_adapter(tmp_path / "b")
    (other / "adapter_model.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(UpdateRefused, match="not a readable safetensors file"):
        validate_adapter(other, BASE, max_rank=16)


def test_checkpoint_must_match_names_and_shapes(tmp_path: Path):
    assert validate_checkpoint(write_checkpoint(tmp_path / "ok"), BASE) == len(BASE)
    wrong = {**BASE, "model.layers.0.self_attn.q_proj.weight": (3, 3)}
    with pytest.raises(UpdateRefused, match=r"wrong shape, e.g. model.layers.0.self_attn.q_proj"):
        validate_checkpoint(write_checkpoint(tmp_path / "wrong", wrong), BASE)
    partial = dict(list(BASE.items())[:2])
    with pytest.raises(UpdateRefused, match="2 served tensor\\(s\\) missing"):
        validate_checkpoint(write_checkpoint(tmp_path / "partial", partial), BASE)
    with pytest.raises(UpdateRefused, match=r"holds no \*\.safetensors file"):
        tensor_shapes(tmp_path)
