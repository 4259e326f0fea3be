"""Model sources without a hub: random models with local tokenizers, resolve_model's cases."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer import models
from services.trainer.models import (
    PYPI_GEMMA,
    ModelResolutionError,
    build_random_model,
    random_model_config,
    resolve_model,
)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("arch", ["lfm2", "qwen2", "llama"])
def test_random_model_loads_offline_and_generates(tmp_path, arch):
    folder = build_random_model(arch, tmp_path / arch)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tokenizer) == 1024
    heads = model.config.num_attention_heads
    assert model.config.hidden_size // heads == 32  # vLLM's CPU attention rejects 16
    if arch == "lfm2":  # vLLM's LFM2 reads these, as the published config.json has them
        assert model.config.conv_dim == model.config.block_dim == model.config.hidden_size
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == model.config.pad_token_id
    prompt = tokenizer("Task: Click the button.\nAction:", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**prompt, max_new_tokens=6, do_sample=True, pad_token_id=0)
    assert out.shape[1] > prompt.input_ids.shape[1]
    tokenizer.decode(out[0])  # every id the model can emit decodes


def test_random_model_is_deterministic_for_a_seed(tmp_path):
    first = _digest(build_random_model("qwen2", tmp_path / "a", seed=3))
    second = _digest(build_random_model("qwen2", tmp_path / "b", seed=3))
    other = _digest(build_random_model("qwen2", tmp_path / "c", seed=4))
    assert first == second
    assert first["model.safetensors"] != other["model.safetensors"]
    assert first["tokenizer.json"] == other["tokenizer.json"]


def test_tokenizer_round_trips_prompt_text_and_has_chat_template(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_random_model("lfm2", tmp_path / "m"))
    text = (
        "Task: Enter \"LAF\" into the text field.\nPage: [21] textbox ''\nAction: fill('21', 'LAF')"
    )
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # merges learned on prompt/action text
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"


def test_base_style_tokenizer_has_no_chat_template(tmp_path):
    folder = build_random_model("llama", tmp_path / "m", chat_template=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template is None
    assert tokenizer.eos_token == "<|endoftext|>"


def test_lfm2_350m_shape_matches_the_published_model():
    config = random_model_config("lfm2", "lfm2-350m")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    assert 350e6 < params < 360e6  # LFM2-350M: 354M parameters
    assert config.layer_types.count("full_attention") == 6 and len(config.layer_types) == 16
    assert model.model.layers[0].feed_forward.w1.out_features == 4608
    assert config.conv_dim == config.conv_dim_out == config.block_dim == 1024


@pytest.mark.parametrize(
    ("arch", "size", "match"),
    [
        ("gpt2", "tiny", "unknown architecture"),
        ("lfm2", "huge", "unknown size"),
        ("qwen2", "lfm2-350m", "LFM2 architecture"),
    ],
)
def test_random_model_rejects_bad_arguments(tmp_path, arch, size, match):
    with pytest.raises(ValueError, match=match):
        build_random_model(arch, tmp_path / "m", size)
    assert not (tmp_path / "m").exists()


def test_resolve_local_folder_as_is(tmp_path):
    folder = build_random_model("llama", tmp_path / "m")
    assert resolve_model(folder, tmp_path / "cache") == folder
    assert resolve_model(str(folder), tmp_path / "cache") == folder


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("", "empty model source"),
        ("pypi:llama-7b", "unknown PyPI model"),
        ("./no/such/folder", "neither an existing folder"),
        ("nobody/not-cached-model", "Pre-download it"),
    ],
)
def test_resolve_rejects_unresolvable_sources(tmp_path, monkeypatch, source, match):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelResolutionError, match=match):
        resolve_model(source, tmp_path / "cache")


def test_resolve_rejects_folders_that_are_not_models(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelResolutionError, match=r"no config\.json"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(ModelResolutionError, match="is a file"):
        resolve_model(tmp_path / "file")


def test_resolve_hub_id_from_the_local_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("acme/tiny", tmp_path / "cache").resolve() == snapshot.resolve()


def _fake_conversion(calls: list[Path], fail: bool = False):
    def convert(out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        if fail:
            raise RuntimeError("conversion died half-way")
        (out_dir / models._COMPLETE_MARKER).write_text(json.dumps({"format": models.CACHE_FORMAT}))

    return convert


def test_pypi_gemma_is_converted_once_and_reused(tmp_path, monkeypatch):
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert_gemma_gguf", _fake_conversion(calls))
    first = resolve_model(PYPI_GEMMA, tmp_path)
    second = resolve_model(PYPI_GEMMA, tmp_path)
    assert first == second == tmp_path / "gemma3-270m"
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gemma3-270m.lock", "gemma3-270m"]


def test_half_written_gemma_cache_is_never_used(tmp_path, monkeypatch):
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert_gemma_gguf", _fake_conversion(calls, fail=True))
    with pytest.raises(RuntimeError, match="half-way"):
        resolve_model(PYPI_GEMMA, tmp_path)
    assert not (tmp_path / "gemma3-270m").exists()
    assert not list(tmp_path.glob(".gemma3-270m.partial-*"))

    # A leftover folder without the completion marker (e.g. copied by hand) is rebuilt.
    (tmp_path / "gemma3-270m").mkdir()
    (tmp_path / "gemma3-270m" / "config.json").write_text("{}")
    monkeypatch.setattr(models, "_convert_gemma_gguf", _fake_conversion(calls))
    assert resolve_model(PYPI_GEMMA, tmp_path) == tmp_path / "gemma3-270m"
    assert (tmp_path / "gemma3-270m" / models._COMPLETE_MARKER).is_file()


def test_older_cache_format_is_converted_again(tmp_path, monkeypatch):
    old = tmp_path / "gemma3-270m"
    old.mkdir()
    (old / "config.json").write_text('{"quantization_config": {"quant_method": "gguf"}}')
    (old / models._COMPLETE_MARKER).write_text('{"source": "pypi:gemma3-270m"}')  # format 1
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert_gemma_gguf", _fake_conversion(calls))
    assert resolve_model(PYPI_GEMMA, tmp_path) == old
    assert len(calls) == 1 and (old / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gemma3-270m.lock", "gemma3-270m"]


@pytest.mark.slow
def test_pypi_gemma_converts_to_a_working_base_model(tmp_path):
    """The real conversion (~1 min, ~4 GiB peak): the base model answers the few-shot prompt."""
    folder = resolve_model(PYPI_GEMMA, tmp_path)
    assert not (folder / "gguf").exists()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.config.model_type == "gemma3_text" and tokenizer.chat_template is None
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    prompt = (
        "Task: Click on the link \"ipsum\".\nPage: [5] link 'ipsum'\n[6] link 'dolor'\n"
        "Action: click('5')\n\nTask: Click the button.\nPage: [13] button 'Click Me!'\nAction:"
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "click('13')" in tokenizer.decode(out[0, inputs.input_ids.shape[1] :])
