"""`make gpu-check`: one GPU's speed and memory for the trainer's two updates, LFM2-350M-shaped.

Times TRL's SFT step and GRPO update on the random LFM2-350M (the real shape, random weights: no
download) as the trainer runs them: bf16 compute, float32 master weights for a full fine-tune and
a bf16 base under LoRA (r 16, every linear layer). Prints tokens/s and peak memory as a Markdown
table for BENCHMARKS.md (and JSON to --json). Rollouts are synthetic (random token ids with the
lengths of a multi-turn episode, the env's tokens masked): env pods and vLLM are not timed here.
About a minute on one H200 (10 timed steps per case after one warm-up).

The GRPO update is then timed again inside the loop ``rollout.max_staleness`` 0 and 1 run: each
rollout takes ``--rollout-seconds`` elsewhere (vLLM replicas on their own GPUs, the env pods), and
with 1 the next step's rollout plays while this one updates. Printed: the trainer's idle fraction
(time waiting for its rollout over the step) sync vs async. Set ``--rollout-seconds`` to a
cluster's median ``trainer_step_seconds{phase="rollout"}``; 0 skips this part.

    python scripts/gpu_check.py                               # the GPU check (micro-batch 8)
    python scripts/gpu_check.py --micro 32                    # bigger micro-batches
    python scripts/gpu_check.py --size tiny --steps 2         # the same code on CPU, in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from services.trainer.models import build_random_model

EPISODES = 32  # prompts_per_step 4 × num_generations 8, as in the chart's default
PROMPT, ACTION, PAGE, TURNS = 600, 24, 200, 3  # tokens: first page, one action, each later page


class StepTimer(TrainerCallback):
    """Seconds of every optimizer step (the GPU synchronised at both ends)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.seconds.append(time.perf_counter() - self._start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _episode(vocab: int, generator: torch.Generator) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, completion ids, env mask) of a synthetic TURNS-turn episode."""

    def ids(n: int) -> list[int]:
        return torch.randint(10, vocab, (n,), generator=generator).tolist()

    completion, mask = [], []
    for turn in range(TURNS):
        if turn:
            completion += ids(PAGE)
            mask += [0] * PAGE
        completion += ids(ACTION)
        mask += [1] * ACTION
    return ids(PROMPT), completion, mask


class SyntheticRollout:
    """TRL ``rollout_func``: episodes of the usual lengths and a random outcome each."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, prompts, trainer) -> dict:
        episodes = [_episode(self.vocab, self.generator) for _ in prompts]
        return {
            "prompt_ids": [p for p, _, _ in episodes],
            "completion_ids": [c for _, c, _ in episodes],
            "logprobs": [[0.0] * len(c) for _, c, _ in episodes],
            "env_mask": [m for _, _, m in episodes],
            "outcome": torch.randint(0, 2, (len(prompts),), generator=self.generator).tolist(),
        }


class RolloutElsewhere(SyntheticRollout):
    """Rollouts that take ``seconds`` on other hardware, played ``ahead`` steps in advance as
    ``BrowserRollout`` does with ``rollout.max_staleness`` (0: each step waits for its own)."""

    def __init__(self, vocab: int, seconds: float, ahead: int) -> None:
        super().__init__(vocab)
        self.seconds, self.ahead = seconds, ahead
        self.generation = ThreadPoolExecutor(1)
        self.queue: deque[Future] = deque()
        self.waits: list[float] = []

    def _play(self, prompts) -> dict:
        time.sleep(self.seconds)
        return super().__call__(prompts, None)

    def __call__(self, prompts, trainer) -> dict:
        called = time.perf_counter()
        if not self.queue:
            self.queue.append(self.generation.submit(self._play, prompts))
        batch = self.queue.popleft().result()
        self.waits.append(time.perf_counter() - called)
        while len(self.queue) < self.ahead:
            self.queue.append(self.generation.submit(self._play, prompts))
        return batch


def outcome(prompts, completions, outcome, **_) -> list[float]:
    return [float(o) for o in outcome]


def _common(out: Path, steps: int, lora: bool, micro: int, checkpointing: bool) -> dict:
    gpu = torch.cuda.is_available()
    return {
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": EPISODES // micro,
        "gradient_checkpointing": checkpointing,  # TRL defaults it on; the trainer's configs off
        "learning_rate": 2e-4 if lora else 2e-5,
        "bf16": gpu,
        "use_cpu": not gpu,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "dataloader_num_workers": 0,
    }


def _model(folder: Path, lora: bool):
    """As the trainer loads it: float32 master weights, a frozen LoRA base in the compute dtype."""
    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if lora and gpu else torch.float32
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


def _peft(lora: bool):
    if not lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")


def sft_step(folder: Path, out: Path, steps: int, lora: bool, **common) -> tuple[list[float], int]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    rows = [_episode(len(tokenizer), generator) for _ in range(EPISODES * steps)]
    data = Dataset.from_dict(
        {
            "input_ids": [p + c for p, c, _ in rows],
            "labels": [
                [-100] * len(p) + [t if m else -100 for t, m in zip(c, k, strict=True)]
                for p, c, k in rows
            ],
        }
    )
    timer = StepTimer()
    trainer = SFTTrainer(
        model=_model(folder, lora),
        args=SFTConfig(**_common(out, steps, lora, **common), max_length=None),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=_peft(lora),
        callbacks=[timer],
    )
    trainer.train()
    return timer.seconds, sum(len(r) for r in data["input_ids"][:EPISODES])


def grpo_update(
    folder: Path, out: Path, steps: int, lora: bool, rollout=None, **common
) -> tuple[list[float], int]:
    """``rollout``: the ``rollout_func`` (default: synthetic episodes at once)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    timer = StepTimer()
    completion = TURNS * ACTION + (TURNS - 1) * PAGE
    trainer = GRPOTrainer(
        model=_model(folder, lora),
        reward_funcs=outcome,
        args=GRPOConfig(
            **_common(out, steps, lora, **common),
            steps_per_generation=EPISODES // common["micro"],
            num_generations=8,
            max_completion_length=completion,
            beta=0.04,  # the configs' KL to the phase start: a reference pass per micro-batch
            use_vllm=False,
            log_completions=False,
        ),
        train_dataset=Dataset.from_dict({"prompt": ["page"] * EPISODES * steps}),
        processing_class=tokenizer,
        peft_config=_peft(lora),
        rollout_func=rollout or SyntheticRollout(len(tokenizer)),
        callbacks=[timer],
    )
    trainer.train()
    return timer.seconds, EPISODES * (PROMPT + completion)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="lfm2-350m", choices=["lfm2-350m", "tiny"])
    parser.add_argument("--steps", type=int, default=11, help="per case; the first warms up")
    parser.add_argument("--micro", type=int, default=8, help="sequences per forward/backward")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="as model.gradient_checkpointing"
    )
    parser.add_argument(
        "--rollout-seconds",
        type=float,
        default=2.0,
        help="one rollout's length elsewhere, for the trainer's idle fraction sync vs async "
        "(0: skip)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.micro < 1 or EPISODES % args.micro:
        parser.error(f"--micro must divide the {EPISODES} sequences of a step")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_random_model("lfm2", Path(tmp) / "model", size=args.size)
        for stage, run in (("SFT step", sft_step), ("GRPO update", grpo_update)):
            for lora in (True, False):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                seconds, tokens = run(
                    folder,
                    Path(tmp) / "out",
                    args.steps,
                    lora,
                    micro=args.micro,
                    checkpointing=args.gradient_checkpointing,
                )
                median = statistics.median(seconds[1:] or seconds)  # without the warm-up step
                peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0
                rows.append(
                    {
                        "stage": stage,
                        "weights": "LoRA r16" if lora else "full",
                        "seconds_per_step": round(median, 3),
                        "tokens_per_s": round(tokens / median),
                        "peak_gib": round(peak, 2),
                        "steps_timed": len(seconds[1:] or seconds),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        overlap = idle_fraction(folder, Path(tmp) / "out", args) if args.rollout_seconds > 0 else []
    compute = "bf16" if torch.cuda.is_available() else "fp32"
    checkpointing = "on" if args.gradient_checkpointing else "off"
    print(f"\n{args.size} (random weights), {device}, {EPISODES} sequences per step, "
          f"micro-batch {args.micro}, gradient checkpointing {checkpointing}, "
          f"{compute} compute\n")  # fmt: skip
    print("| stage | weights | s/step (median) | tokens/s | peak GPU memory |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['weights']} | {r['seconds_per_step']} | "
              f"{r['tokens_per_s']} | {r['peak_gib']} GiB |")  # fmt: skip
    if overlap:
        print(f"\nGRPO steps with a {args.rollout_seconds:g} s rollout elsewhere, "
              "rollout.max_staleness 0 (sync) vs 1 (async)\n")  # fmt: skip
        print("| weights | max_staleness | s/step (median) | trainer waited s (median) | "
              "trainer idle fraction |")  # fmt: skip
        print("|---|---|---|---|---|")
        for r in overlap:
            print(f"| {r['weights']} | {r['max_staleness']} | {r['seconds_per_step']} | "
                  f"{r['waited_s']} | {r['idle_fraction']} |")  # fmt: skip
    if args.json:
        setup = {"device": device, "size": args.size, "micro": args.micro}
        setup["gradient_checkpointing"] = args.gradient_checkpointing
        setup["rollout_seconds"] = args.rollout_seconds
        args.json.write_text(json.dumps({**setup, "rows": rows, "overlap": overlap}))


def idle_fraction(folder: Path, out: Path, args: argparse.Namespace) -> list[dict]:
    """The GRPO update inside the sync (0) and one-ahead (1) loops: how much of each step the
    trainer spent waiting for its rollout (the first step, whose rollout nothing overlaps, is
    left out)."""
    vocab = len(AutoTokenizer.from_pretrained(folder))
    rows = []
    for lora in (True, False):
        for ahead in (0, 1):
            rollout = RolloutElsewhere(vocab, args.rollout_seconds, ahead)
            seconds, _ = grpo_update(
                folder,
                out,
                args.steps,
                lora,
                rollout=rollout,
                micro=args.micro,
                checkpointing=args.gradient_checkpointing,
            )
            rollout.generation.shutdown(cancel_futures=True)
            waited, timed = rollout.waits[1:], seconds[1:]
            rows.append(
                {
                    "weights": "LoRA r16" if lora else "full",
                    "max_staleness": ahead,
                    "seconds_per_step": round(statistics.median(timed), 3),
                    "waited_s": round(statistics.median(waited), 3),
                    "idle_fraction": round(sum(waited) / sum(timed), 3),
                    "steps_timed": len(timed),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
