"""A rule-based policy behind the generation interface: reads the page, answers like a good agent.

Not a model: it exists to exercise everything around the model (env pods, rollout engine, token
bookkeeping, reward path) at full speed, in tests and in ``make bench-rollout``. It solves
click-test, click-button-style pages (the last button), enter-text and focus-text; ``replies``
scripts exact answers instead. Its token ids are the tokenizer's encoding of its answer and its
logprobs are known (-0.25 × position), so tests can follow them into the training batch. With
``spread`` the k-th episode of the same page clicks another button than the (k-1)-th: rewards
that differ inside a GRPO group, without sampling (the same on every run).
"""

from __future__ import annotations

import re
from collections import Counter

from services.trainer.generation.base import Generation, SamplingParams

_TEXTBOX = re.compile(r"\[(\w+)\] textbox ''(?! value=)")  # an empty one: not yet filled
_BUTTON = re.compile(r"\[(\w+)\] button")
_ENTER = re.compile(r'Enter "([^"]+)"')


class ScriptedBackend:
    """``GenerationBackend`` that answers from the prompt text (see module docstring)."""

    def __init__(
        self,
        tokenizer,
        replies: list[str] | None = None,
        *,
        suffix: str = "",
        policy_version: int = 7,
        spread: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.replies = list(replies or [])
        self.suffix = suffix
        self.policy_version = policy_version
        self.spread = spread
        self.seen: Counter[str] = Counter()
        self.calls: list[list[list[int]]] = []
        self.outputs: list[Generation] = []

    @classmethod
    def from_config(cls, config, *, context) -> ScriptedBackend:
        """From ``ScriptedBackendConfig``: answers in the policy tokenizer's ids."""
        return cls(context.tokenizer, policy_version=0, spread=config.spread)

    def answer(self, prompt_text: str) -> str:
        if self.replies:
            return self.replies.pop(0)
        page = prompt_text.rsplit("Page", 1)[-1]
        goal = _ENTER.findall(prompt_text)
        textbox = _TEXTBOX.search(page)
        if textbox and goal:
            return f"fill('{textbox.group(1)}', '{goal[-1]}')"
        buttons = _BUTTON.findall(page)
        if buttons and self.spread:  # the k-th sight of this prompt: the k-th button from last
            self.seen[prompt_text] += 1
            return f"click('{buttons[-self.seen[prompt_text] % len(buttons)]}')"
        if buttons:
            return f"click('{buttons[-1]}')"
        return f"click('{textbox.group(1)}')" if textbox else "noop()"

    async def generate(
        self, prompts: list[list[int]], params: SamplingParams, episodes=None
    ) -> list[Generation]:
        self.calls.append(prompts)
        out = []
        for ids in prompts:
            text = self.answer(self.tokenizer.decode(ids)) + self.suffix
            token_ids = self.tokenizer.encode(text, add_special_tokens=False)
            logprobs = [-0.25 * (i + 1) for i in range(len(token_ids))]
            out.append(Generation(token_ids, logprobs, text, policy_version=self.policy_version))
        self.outputs.extend(out)
        return out

    async def close(self) -> None:
        return None
