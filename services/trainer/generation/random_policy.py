"""A random policy: each turn clicks a random element of the page, or types a word of the goal
into a random text box. The floor every trained policy should beat, and the source of realistic
failed trajectories for an outcome reward model's data (both classes must be present)."""

from __future__ import annotations

import random
import re

from services.protocol import axtree as tree
from services.trainer.generation.base import Generation, SamplingParams

_GOAL = re.compile(r"^(?:Task|Goal): (.*)$", re.MULTILINE)
_TYPED_ROLES = frozenset({"textbox", "searchbox", "combobox", "spinbutton"})


class RandomBackend:
    """``GenerationBackend`` with no model: a uniform choice among the page's elements."""

    def __init__(self, tokenizer, *, seed: int = 0, fill_share: float = 0.3) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self.fill_share = fill_share

    @classmethod
    def from_config(cls, config, *, context) -> RandomBackend:
        return cls(context.tokenizer, seed=config.seed, fill_share=config.fill_share)

    def answer(self, prompt_text: str) -> str:
        """An action on the last page the prompt shows (``noop()`` on a page with none)."""
        page = prompt_text.rsplit("Page", 1)[-1]
        found = [e for e in map(tree.element, page.splitlines()) if e is not None]
        typed = [e for e in found if e.role in _TYPED_ROLES]
        if typed and self.rng.random() < self.fill_share:
            goals = _GOAL.findall(prompt_text)  # the last: few-shot examples come first
            words = goals[-1].split() if goals else ["text"]
            word = self.rng.choice(words).strip("\"'.,")
            return f"fill({self.rng.choice(typed).bid!r}, {word!r})"
        return f"click({self.rng.choice(found).bid!r})" if found else "noop()"

    async def generate(
        self, prompts: list[list[int]], params: SamplingParams, episodes=None
    ) -> list[Generation]:
        out = []
        for ids in prompts:
            text = self.answer(self.tokenizer.decode(ids)) + "\n"
            token_ids = self.tokenizer.encode(text, add_special_tokens=False)
            logprobs = [0.0] * len(token_ids)  # not a distribution the trainer could correct
            out.append(Generation(token_ids, logprobs, text, policy_version=0))
        return out

    async def close(self) -> None:
        return None
