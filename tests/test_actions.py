"""The action grammar (services/protocol/actions.py) as tables: what a policy's reply becomes.

It decides every invalid action the trainer counts and every call the env executes (the env runs
only the canonical text of a parsed call, never the reply itself)."""

from __future__ import annotations

import re

import pytest

from services.protocol.actions import (
    ActionParseError,
    allowed_actions,
    describe,
    extract_action,
    parse_action,
)

LIU18 = allowed_actions(["miniwob_liu18"])  # noop, click, fill

PARSES = [
    # (text, canonical form)
    ("click('13')", "click('13')"),
    ('click("13")', "click('13')"),
    ("  click( '13' )  ", "click('13')"),
    ("fill('21', 'LAF')", "fill('21', 'LAF')"),
    ("fill('21', \"it's\")", "fill('21', \"it's\")"),
    ("fill('21', 'say \\'hi\\'')", "fill('21', \"say 'hi'\")"),
    ("fill('21', 'a\\nb')", "fill('21', 'a\\nb')"),
    ("fill('21', 'Zürich – 東京')", "fill('21', 'Zürich – 東京')"),
    ("fill('21', 'a) b')", "fill('21', 'a) b')"),
    ("noop()", "noop()"),
    ("noop(500)", "noop(500)"),
    ("select_option('7', ['a', 'b'])", "select_option('7', ['a', 'b'])"),
    ("click('13', button='right')", "click('13', button='right')"),
    ("scroll(0, -200.5)", "scroll(0, -200.5)"),
]


@pytest.mark.parametrize(("text", "canonical"), PARSES)
def test_well_formed_calls_parse_to_their_canonical_text(text, canonical):
    assert str(parse_action(text)) == canonical


REFUSED = [
    # (text, allowed, what the message says)
    ("", None, "empty action"),
    ("click 13", None, "malformed action"),
    ("click('13'", None, "malformed action"),
    ("click", None, "not an action call"),
    ("'click(13)'", None, "not an action call"),
    ("page.click('13')", None, "not an action call"),
    ("goto('http://evil.example')", LIU18, "'goto' is not allowed here"),
    ("eval('1')", None, "'eval' is not allowed"),
    ("__import__('os').system('rm -rf /')", None, "not an action call"),
    ("click('13') or __import__('os')", None, "not an action call"),
    ("click('13'); click('14')", None, "malformed action"),
    ("click(open('/etc/passwd').read())", None, "arguments must be literals"),
    ("click(x)", None, "arguments must be literals"),
    ("click('1' + '3')", None, "arguments must be literals"),
    ("click(f'{13}')", None, "arguments must be literals"),
    ("click(lambda: 0)", None, "arguments must be literals"),
    ("click(('1', '3'))", None, "unsupported argument type tuple"),
    ("click({'bid': '13'})", None, "unsupported argument type dict"),
    ("click(**{'bid': '13'})", None, "**kwargs are not supported"),
]


@pytest.mark.parametrize(("text", "allowed", "message"), REFUSED)
def test_anything_else_is_refused_with_a_reason(text, allowed, message):
    with pytest.raises(ActionParseError, match=re.escape(message)):
        parse_action(text, allowed)


REPLIES = [
    # (a model's reply, the action the trainer sends; None = an invalid action)
    ("click('13')", "click('13')"),
    ("I will click the button: click('13').", "click('13')"),
    ("```python\nfill('21', 'LAF')\n```", "fill('21', 'LAF')"),
    ("Action: click('13')\nThen I will wait.", "click('13')"),
    ("click('12') click('13')", "click('12')"),  # the first one
    ("goto('http://x') then click('13')", "click('13')"),  # disallowed name skipped
    ("fill('3', 'a) b') done", "fill('3', 'a) b')"),
    ("click('13') or __import__('os').system('x')", "click('13')"),  # only the call runs
    ("__import__('os').system('x')", None),
    ("I don't know what to do.", None),
    ("", None),
    ("click(13", None),
    ("Click the OK button", None),
]


@pytest.mark.parametrize(("reply", "action"), REPLIES)
def test_the_first_allowed_call_is_read_out_of_a_verbose_reply(reply, action):
    parsed = extract_action(reply, LIU18)
    assert (str(parsed) if parsed else None) == action


def test_subsets_name_what_a_prompt_offers_and_unknown_ones_fail():
    assert LIU18 == ("noop", "click", "fill")
    assert describe(["miniwob_liu18"]).splitlines()[1].startswith("click(bid: str")
    with pytest.raises(ValueError, match="unknown action subset"):
        allowed_actions(["mouse"])
