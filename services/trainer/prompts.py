"""Prompts for the browser policy, built as token ids that only ever grow within an episode.

An episode's context is ``prompt + completion_1 + env_2 + completion_2 + env_3 + ...``: each turn
appends the env's reply (observation text, tokenized) after the model's own sampled tokens, which
are kept exactly as generated. Training then sees exactly the context each action was sampled
from, and ``env_mask`` marks which tokens were the model's.

Three formats:
- ``chat``: the tokenizer's chat template (instruction models, e.g. LFM2-350M).
- ``fewshot``: plain "Task:/Page:/Action:" text with three worked examples, for base models
  without a chat template (Gemma-3-270M base writes the right click-test action 15/16 times at
  temperature 0.7 this way, 0/16 zero-shot; BENCHMARKS.md has the base model study). The reply
  ends at the newline.
- ``plain``: the same text without the worked examples, for a model the SFT warm-up taught the
  format (``sft.prompt_format``): ~300 fewer tokens per episode (on Gemma a first prompt shrinks
  from ~490 tokens to ~190), and no example answer (``fill(.., 'Paris')``) to copy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Literal

from services.protocol import axtree as tree
from services.protocol.actions import allowed_actions, describe
from services.protocol.env import BrowserObservation

PromptFormat = Literal["chat", "fewshot", "plain"]
LINE_FORMATS = ("fewshot", "plain")  # "Task:/Page:/Action:" text, one-line replies

_INSTRUCTIONS = (
    "You control a web browser to complete a task on a web page. The page is given as an "
    "accessibility tree where [id] marks elements you can act on. Reply with exactly one action, "
    "a function call from this list, and nothing else:\n"
)

# Worked examples in the env's accessibility-tree format (BrowserGym flatten_axtree_to_str).
_FEWSHOT_EXAMPLES = """Task: Click on the "Contact" link.
Page:
RootWebArea 'Links Task', focused
\t[5] link 'Home'
\t[6] link 'Contact'
Action: click('6')

Task: Enter "Paris" into the text field and press Submit.
Page:
RootWebArea 'Form Task', focused
\t[11] textbox ''
\t[12] button 'Submit'
Action: fill('11', 'Paris')
Page (step 2):
RootWebArea 'Form Task', focused
\t[11] textbox '' value='Paris'
\t[12] button 'Submit'
Action: click('12')

Task: Click on the "OK" button.
Page:
RootWebArea 'Dialog Task', focused
\t[21] StaticText 'Are you sure?'
\t[22] button 'Cancel'
\t[23] button 'OK'
Action: click('23')

"""


def resolve_format(tokenizer, requested: str) -> PromptFormat:
    """'auto' → 'chat' when the tokenizer has a chat template, else 'fewshot'."""
    if requested == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "fewshot"
    if requested == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("model.prompt_format is 'chat' but the tokenizer has no chat template")
    return requested  # type: ignore[return-value]


class PromptBuilder:
    """Turns observations into token ids for one policy tokenizer and format."""

    def __init__(
        self,
        tokenizer,
        *,
        fmt: PromptFormat,
        action_subsets: Sequence[str] = ("bid",),
        axtree_max_tokens: int = 384,
        compact_axtree: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.format = fmt
        self.allowed = allowed_actions(action_subsets)
        self.axtree_max_tokens = axtree_max_tokens
        self.compact_axtree = compact_axtree
        self.system = _INSTRUCTIONS + describe(action_subsets)
        self._chat_closing_marker = "\x00ASSISTANT-REPLY\x00"

    @classmethod
    def from_config(cls, tokenizer, cfg) -> PromptBuilder:
        """From a ``TrainerConfig`` (``prompt`` section and ``model.prompt_format``)."""
        return cls(
            tokenizer,
            fmt=resolve_format(tokenizer, cfg.model.prompt_format),
            action_subsets=cfg.prompt.action_subsets,
            axtree_max_tokens=cfg.prompt.axtree_max_tokens,
            compact_axtree=cfg.prompt.compact_axtree,
        )

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings for generation: the few-shot (and plain) reply is one line."""
        return ("\n",) if self.format in LINE_FORMATS else ()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def reply_ids(self, action: str) -> list[int]:
        """An action as the policy writes its reply in this format, finished (for demonstrations):
        one line after ``Action:`` (few-shot), or the assistant's text then end of sequence."""
        if self.format in LINE_FORMATS:
            return self.encode(f" {action}\n")
        eos = self.tokenizer.eos_token_id
        return self.encode(action) + ([eos] if isinstance(eos, int) else [])

    def truncate_axtree(self, axtree: str) -> str:
        """The tree (compacted if configured) cut to ``axtree_max_tokens`` policy tokens."""
        if self.compact_axtree:
            axtree = compact(axtree)
        ids = self.encode(axtree)
        if len(ids) <= self.axtree_max_tokens:
            return axtree
        return self.tokenizer.decode(ids[: self.axtree_max_tokens]) + "\n... (page truncated)"

    # --- first turn -------------------------------------------------------------------------

    def first_prompt(self, obs: BrowserObservation, max_turns: int) -> list[int]:
        """Token ids of the whole first-turn prompt."""
        if self.format in LINE_FORMATS:
            text = (
                self.system
                + "\n\n"
                + (_FEWSHOT_EXAMPLES if self.format == "fewshot" else "")
                + f"Task: {obs.goal}\nPage:\n{self.truncate_axtree(obs.axtree_txt)}\nAction:"
            )
            bos = self.tokenizer.bos_token_id
            return ([bos] if bos is not None else []) + self.encode(text)
        messages = self._first_messages(obs, max_turns)
        return self.encode(self._render(messages, generation_prompt=True))

    def _first_messages(self, obs: BrowserObservation, max_turns: int) -> list[dict[str, str]]:
        user = self._user_turn(obs, turn=1, max_turns=max_turns, previous_action=None)
        if self._supports_system():
            return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
        return [{"role": "user", "content": self.system + "\n\n" + user}]

    # --- later turns ------------------------------------------------------------------------

    def next_turn(
        self,
        obs: BrowserObservation,
        *,
        turn: int,
        max_turns: int,
        action: str,
        completion_ids: Sequence[int],
        completion_finished: bool,
    ) -> list[int]:
        """Env tokens to append after the model's completion of the previous turn.

        ``completion_finished``: the completion ended on its own (EOS / stop string) rather than
        at the token cap; when it did not, the format's turn separator is added here.
        """
        if self.format in LINE_FORMATS:
            lines = "" if completion_finished else "\n"
            if obs.error:
                lines += f"Error: {_one_line(obs.error)}\n"
            lines += f"Page (step {turn}):\n{self.truncate_axtree(obs.axtree_txt)}\nAction:"
            return self.encode(lines)
        user = self._user_turn(obs, turn=turn, max_turns=max_turns, previous_action=action)
        return self.encode(self._chat_continuation(user, completion_ids, completion_finished))

    def render_episode(
        self, goal: str, turns: Sequence[tuple[str, str, str]], max_turns: int
    ) -> tuple[list[int], list[int], list[int]]:
        """(prompt_ids, completion_ids, env_mask) of an episode given as (page, action, error)
        per turn, assembled exactly as the rollout engine assembles a played one (each action
        written as a finished reply). For episodes recorded with another tokenizer or format
        (a teacher's): the student is then trained on its own token sequence."""
        pages = [page for page, _, _ in turns]
        prompt_ids = self.first_prompt(
            BrowserObservation(goal=goal, axtree_txt=pages[0]), max_turns
        )
        completion: list[int] = []
        mask: list[int] = []
        for index, (_, action, error) in enumerate(turns):
            reply = self.reply_ids(action)
            completion += reply
            mask += [1] * len(reply)
            if index + 1 < len(turns):
                seen = BrowserObservation(goal=goal, axtree_txt=pages[index + 1], error=error)
                env = self.next_turn(
                    seen,
                    turn=index + 2,
                    max_turns=max_turns,
                    action=action,
                    completion_ids=reply,
                    completion_finished=True,
                )
                completion += env
                mask += [0] * len(env)
        eos = self.tokenizer.eos_token_id
        if isinstance(eos, int) and completion and completion[-1] != eos:
            completion.append(eos)  # the engine closes every episode so (masked)
            mask.append(0)
        return prompt_ids, completion, mask

    def _user_turn(
        self, obs: BrowserObservation, *, turn: int, max_turns: int, previous_action: str | None
    ) -> str:
        parts = [f"Goal: {obs.goal}", f"Turn {turn} of {max_turns}."]
        if previous_action is not None:
            parts.append(f"Previous action: {previous_action}")
            parts.append(f"Its error: {_one_line(obs.error)}" if obs.error else "It succeeded.")
        parts.append("Page:\n" + self.truncate_axtree(obs.axtree_txt))
        parts.append("Your action:")
        return "\n".join(parts)

    def _chat_continuation(
        self, user: str, completion_ids: Sequence[int], completion_finished: bool
    ) -> str:
        """Template text between the end of the model's reply and the next generation start.

        Rendered with a marker as the assistant reply, so whatever the template puts after a reply
        (end-of-turn token, newline) and before the next one comes out exactly; the end-of-turn
        token the model already sampled is not repeated.
        """
        marker = self._chat_closing_marker
        messages = [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": marker},
            {"role": "user", "content": user},
        ]
        rendered = self._render(messages, generation_prompt=True)
        tail = rendered[rendered.index(marker) + len(marker) :]
        if completion_finished and completion_ids:
            sampled_end = self.tokenizer.decode([completion_ids[-1]])
            if sampled_end and tail.startswith(sampled_end):
                tail = tail[len(sampled_end) :]
        return tail

    def _render(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _supports_system(self) -> bool:
        try:
            self._render(
                [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                generation_prompt=True,
            )
        except Exception:  # templates that reject a system role raise their own error types
            return False
        return True


_URL_ATTR = re.compile(r", url='[^']*'")


def compact(axtree: str) -> str:
    """Drop what costs tokens and tells the policy nothing, and put an element's text on its
    ``[bid]`` line, where a small policy reads it with the id:

    - ``InlineTextBox`` lines (they repeat their parent's text), empty ``StaticText ''`` lines,
      and the page's ``url='file://...'`` attribute;
    - an unnamed element whose only child is a text takes that text as its name:
      ``[14] generic, clickable=True`` over ``StaticText 'Tortor'`` (a MiniWoB link) becomes
      ``[14] generic 'Tortor', clickable=True``;
    - a text right after an element of the same depth and name is dropped (a radio's label:
      ``[18] radio '42'`` then ``StaticText '42'``).
    """
    lines = [
        _URL_ATTR.sub("", line)
        for line in axtree.splitlines()
        if not line.lstrip().startswith(("InlineTextBox", "StaticText ''"))
    ]
    kept: list[str] = []
    i = 0
    while i < len(lines):
        merged = _with_its_text(lines, i)
        kept.append(merged or lines[i])
        i += 2 if merged else 1
    return "\n".join(kept)


def _with_its_text(lines: list[str], i: int) -> str | None:
    """Line ``i`` with the text line after it folded in (see ``compact``), or None."""
    label = tree.text(lines[i + 1]) if i + 1 < len(lines) else None
    node = tree.element(lines[i])
    if node is None or label is None or not label.strip():
        return None
    label_depth = tree.depth(lines[i + 1])
    sole_child = i + 2 == len(lines) or tree.depth(lines[i + 2]) <= node.depth
    unnamed = not node.name and (not node.attrs or node.attrs.startswith((",", " value=")))
    if unnamed and label_depth == node.depth + 1 and sole_child:
        return node.with_name(label.strip())
    if node.named and label_depth == node.depth:
        return lines[i] if node.name.strip() == label.strip() else None
    return None


# A page that every rule of ``compact`` changes: its rendering fingerprints the rules.
_RENDERING_SAMPLE = (
    "RootWebArea 'Sample', focused, url='file:///sample.html'\n"
    "\t[13] generic, clickable=True\n\t\tStaticText 'Tortor'\n\t\t\tInlineTextBox 'Tortor'\n"
    "\t[17] LabelText ''\n\t\t[18] radio '42', checked='false'\n\t\tStaticText '42'\n"
    "\tStaticText ''"
)


def page_rendering(compact_axtree: bool, axtree_max_tokens: int) -> str:
    """How prompts show a page, as a short fingerprint (compaction rules and page budget):
    evaluations under another rendering are not the same measurement, so a stored base report
    is reused only when this matches."""
    shown = compact(_RENDERING_SAMPLE) if compact_axtree else _RENDERING_SAMPLE
    return f"{hashlib.sha256(shown.encode()).hexdigest()[:12]}/{axtree_max_tokens}"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."
