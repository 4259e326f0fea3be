"""What the outcome reward model reads, and the two answers it chooses between."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from services.protocol import axtree as tree
from services.protocol.actions import ActionParseError, parse_action
from services.protocol.trajectory import Trajectory
from services.trainer.prompts import compact
from services.trainer.rollout import Episode

JudgeFormat = Literal["plain", "chat"]

INSTRUCTIONS = (
    "You are an expert in evaluating the performance of a web navigation agent. The agent "
    "was given a task on a web page. Given the task, the agent's action history and the final "
    "state of the page, decide whether the agent completed the task. Answer YES or NO."
)
QUESTION = "Did the agent complete the task? Answer YES or NO."
ANSWERS = ("YES", "NO")


@dataclass(frozen=True)
class JudgeInput:
    """One trajectory as the judge sees it."""

    goal: str
    history: tuple[str, ...]
    """One line per action, each naming the element it touched (``annotate``)."""
    final_page: str
    """The accessibility tree the last action left."""


def annotate(action: str, page: str) -> str:
    """``click('15')  # button 'Submit'``: the action, and the role and label its target had on
    the page it was taken on (the action alone when it targets nothing or no such element)."""
    try:
        target = parse_action(action).target
    except ActionParseError:
        return action
    if target is None:
        return action
    found = next((e for e in tree.elements(page) if e.bid == target), None)
    if found is None:
        return f"{action}  # no element {target} on the page"
    label = f" {found.label!r}" if found.label else ""
    return f"{action}  # {found.role}{label}"


def judge_input(goal: str, turns: Sequence[tuple[str, str]], final_page: str) -> JudgeInput:
    """From the goal, each turn's (page it was taken on, action) and the final page."""
    return JudgeInput(goal, tuple(annotate(a, page) for page, a in turns), final_page)


def from_episode(episode: Episode) -> JudgeInput:
    return judge_input(
        episode.goal,
        [(t.observation, t.action) for t in episode.turn_log],
        episode.final_observation,
    )


def from_record(record: Trajectory) -> JudgeInput:
    return judge_input(
        record.goal, [(t.observation, t.action) for t in record.turns], record.final_observation
    )


class JudgePrompt:
    """Renders judge inputs for one tokenizer: the plain text ends in ``Answer:`` and the answer
    is `` YES``/`` NO``; the chat form is the tokenizer's template with the answer as the
    assistant's first token. The final page is compacted as the policy sees it, then cut to
    ``page_tokens`` tokens, so the history and question always fit."""

    def __init__(self, tokenizer, *, fmt: JudgeFormat | None = None, page_tokens: int = 512):
        self.tokenizer = tokenizer
        self.format: JudgeFormat = fmt or (
            "chat" if getattr(tokenizer, "chat_template", None) else "plain"
        )
        self.page_tokens = page_tokens
        yes, no = (self._encode(f" {a}" if self.format == "plain" else a) for a in ANSWERS)
        shared = next(i for i, (a, b) in enumerate(zip(yes, no, strict=False)) if a != b)
        self.lead_ids = yes[:shared]
        """Tokens both answers start with (a lone space in some tokenizers): part of the prompt."""
        self.answer_ids = (yes[shared], no[shared])

    def text(self, item: JudgeInput) -> str:
        """The prompt, up to where the answer token goes."""
        body = self._body(item)
        if self.format == "plain":
            return f"{INSTRUCTIONS}\n\n{body}\n{QUESTION}\nAnswer:"
        messages = [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": f"{body}\n{QUESTION}"},
        ]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def ids(self, item: JudgeInput) -> list[int]:
        """The prompt's token ids, up to the answer token: the plain text with the tokenizer's
        special tokens (BOS; the chat template writes its own), then the answers' shared lead."""
        special = self.format == "plain"
        return self.tokenizer.encode(self.text(item), add_special_tokens=special) + self.lead_ids

    def example_ids(self, item: JudgeInput, yes: bool) -> tuple[list[int], list[int]]:
        """(input ids, loss mask) of a labelled example: the prompt, then the answer token,
        the only position the loss sees."""
        prompt = self.ids(item)
        return [*prompt, self.answer_ids[0 if yes else 1]], [0] * len(prompt) + [1]

    def _body(self, item: JudgeInput) -> str:
        steps = "\n".join(f"{i}. {line}" for i, line in enumerate(item.history, 1)) or "(none)"
        return (
            f"Task: {item.goal}\nAction history:\n{steps}\n"
            f"Final page:\n{self._cut(compact(item.final_page))}"
        )

    def _cut(self, page: str) -> str:
        ids = self.tokenizer.encode(page, add_special_tokens=False)
        if len(ids) <= self.page_tokens:
            return page
        return self.tokenizer.decode(ids[: self.page_tokens]) + "\n... (page truncated)"

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)
