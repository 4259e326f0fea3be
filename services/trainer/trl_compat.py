"""Everything that reaches into TRL's internals, in one place, for the version it was written for.

TRL's public API covers the rollout function, reward functions and callbacks; two things this
trainer needs are not public: scoring only completion tokens on CPU (``_use_triton``) and adding
rollout figures to TRL's per-step metrics (``trainer._metrics``). Both check
``TRL_VERSION`` and degrade to doing nothing (with a warning) on another release, so an upgrade
loses a speed-up or a log column, never correctness.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: The TRL release these patches were written against (pyproject pins it).
TRL_VERSION = "1.16.0"


def _same_version(what: str) -> bool:
    import trl

    if trl.__version__ != TRL_VERSION:
        log.warning("TRL %s: not applying %s (written for %s)", trl.__version__, what, TRL_VERSION)
        return False
    return True


def score_only_completion_tokens_on_cpu() -> bool:
    """Make TRL's fused LM head score only the completion positions on CPU, as it does on GPUs.

    TRL 1.16 scores the completion tokens' log-probabilities through a chunked LM-head kernel. On
    Triton devices it feeds the kernel only the positions that carry a label; elsewhere it feeds
    every position of prompt + completion (to keep tile shapes fixed for compilers) and discards
    the prompt's results. With Gemma's 262k-token vocabulary and a few-shot prompt of ~400 tokens
    that wastes most of a CPU update (the results are identical: the prompt positions are masked
    either way; ``test_cpu_scoring_patch_keeps_the_logprobs`` checks it). The switch is TRL's own
    ``compact`` branch, selected by ``trl.trainer.utils._use_triton``; the kernel itself still
    takes its CPU path (it reads its own module's ``_use_triton``). Returns whether it applied.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None or getattr(original, "_browser_rl_patched", False):
        return original is not None
    if not _same_version("its CPU LM-head scoring patch"):
        return False

    def use_compact_scoring(device) -> bool:
        return device.type == "cpu" or original(device)

    use_compact_scoring._browser_rl_patched = True
    trl_utils._use_triton = use_compact_scoring
    return True


def log_step_metrics(trainer, values: Mapping[str, float]) -> None:
    """Add figures to TRL's per-step training metrics (averaged into each log line, so they reach
    ``report_to`` trackers beside TRL's own)."""
    bucket = getattr(trainer, "_metrics", {}).get("train")
    if bucket is None:
        return
    for key, value in values.items():
        bucket[key].append(float(value))
