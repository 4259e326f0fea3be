"""Prompt compaction and truncation as tables: what of a page the policy gets to read."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from services.protocol.env import BrowserObservation
from services.trainer.prompts import PromptBuilder, compact

TREE = """RootWebArea 'Click Test Task', focused, url='file:///x/click-test.html'
\t[13] button 'Click Me!'
\t\tInlineTextBox 'Click'
\t\tInlineTextBox 'Me!'
\t[14] textbox '' value='a'"""

COMPACTED_TREE = (
    "RootWebArea 'Click Test Task', focused\n\t[13] button 'Click Me!'\n\t[14] textbox ''"
)
COMPACTED = [
    # (tree, compacted)
    (TREE, COMPACTED_TREE + " value='a'"),
    ("\t[5] link 'Home'", "\t[5] link 'Home'"),  # nothing to drop
    ("\t\tInlineTextBox 'only'", ""),
    ("RootWebArea 'x', url='http://a/b?c=1'", "RootWebArea 'x'"),
    # A value that merely mentions a URL or the word InlineTextBox stays.
    ("\t[7] StaticText 'see InlineTextBox docs'", "\t[7] StaticText 'see InlineTextBox docs'"),
    # A MiniWoB link: its text goes onto its id's line; the text between links stays.
    (
        "\t[14] generic, clickable=True\n\t\tStaticText 'Tortor'\n\t\t\tInlineTextBox 'Tortor'\n"
        "\tStaticText 'nec. A'",
        "\t[14] generic 'Tortor', clickable=True\n\tStaticText 'nec. A'",
    ),
    ("\t[24] paragraph ''\n\t\tStaticText 'Etiam.'", "\t[24] paragraph 'Etiam.'"),
    # Not its only child (a dialog's title bar holds a button too): nothing to fold.
    (
        "\t[18] generic, clickable=True\n\t\tStaticText ''\n\t\t[20] button 'Close'",
        "\t[18] generic, clickable=True\n\t\t[20] button 'Close'",
    ),
    (
        "\t[18] generic, clickable=True\n\t\tStaticText 'Hi'\n\t\t[20] button 'Close'",
        "\t[18] generic, clickable=True\n\t\tStaticText 'Hi'\n\t\t[20] button 'Close'",
    ),
    # A radio's label repeats its name: dropped; a different text beside it stays.
    (
        "\t[17] LabelText ''\n\t\t[18] radio '42', checked='false'\n\t\tStaticText '42'",
        "\t[17] LabelText ''\n\t\t[18] radio '42', checked='false'",
    ),
    ("\t\t[18] radio '42'\n\t\tStaticText '43'", "\t\t[18] radio '42'\n\t\tStaticText '43'"),
    # A named element keeps its own name even when its only child says something else.
    ("\t[5] link 'Home'\n\t\tStaticText 'Go'", "\t[5] link 'Home'\n\t\tStaticText 'Go'"),
]


@pytest.mark.parametrize(("tree", "expected"), COMPACTED)
def test_compaction_drops_what_costs_tokens_and_tells_nothing(tree, expected):
    assert compact(tree) == expected


@pytest.fixture(scope="module")
def tokenizer(tiny_base_model):
    return AutoTokenizer.from_pretrained(tiny_base_model)


def builder(tokenizer, budget: int, compact_axtree: bool = True) -> PromptBuilder:
    return PromptBuilder(
        tokenizer, fmt="fewshot", axtree_max_tokens=budget, compact_axtree=compact_axtree
    )


@pytest.mark.parametrize("budget", [16, 40, 120])
def test_a_long_page_is_cut_to_its_token_budget_and_says_so(tokenizer, budget):
    page = "\n".join(f"\t[{i}] button 'Option number {i}'" for i in range(200))
    cut = builder(tokenizer, budget).truncate_axtree(page)
    body, marker = cut.rsplit("\n", 1)
    assert marker == "... (page truncated)"
    assert len(tokenizer.encode(body, add_special_tokens=False)) <= budget + 1
    assert page.startswith(body.rstrip())  # the start of the page, not a summary


def test_a_page_within_budget_is_kept_whole(tokenizer):
    assert builder(tokenizer, 10_000).truncate_axtree(TREE) == compact(TREE)
    assert builder(tokenizer, 10_000, compact_axtree=False).truncate_axtree(TREE) == TREE


def test_the_goal_is_never_cut_only_the_page(tokenizer):
    goal = "Enter the name " + "very " * 50 + "long and press Greet."
    obs = BrowserObservation(goal=goal, axtree_txt="\n".join(f"\t[{i}] x" for i in range(500)))
    text = tokenizer.decode(builder(tokenizer, 16).first_prompt(obs, max_turns=3))
    assert f"Task: {goal}" in text and "... (page truncated)" in text


def test_the_plain_format_is_the_few_shot_text_without_its_worked_examples(tokenizer):
    """What SFT teaches a base model: the same task/page/action text, ~300 tokens shorter."""
    obs = BrowserObservation(goal='Click on the "Next" button.', axtree_txt=TREE)
    fewshot, plain = (
        PromptBuilder(tokenizer, fmt=fmt, action_subsets=["miniwob_liu18"])
        for fmt in ("fewshot", "plain")
    )
    long, short = (tokenizer.decode(b.first_prompt(obs, max_turns=3)) for b in (fewshot, plain))
    examples = long.index('Task: Click on the "Contact"'), long.index('Task: Click on the "Next')
    assert short == long[: examples[0]] + long[examples[1] :]
    assert "Paris" in long and "Paris" not in short
    assert plain.stop == fewshot.stop == ("\n",)
    assert plain.reply_ids("click('13')") == fewshot.reply_ids("click('13')")
