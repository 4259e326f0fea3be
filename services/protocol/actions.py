"""The action grammar shared by the env service (validation) and the trainer (prompts, parsing).

Actions are BrowserGym high-level action calls with literal arguments, e.g. ``click('13')``,
``fill('21', 'LAF')``, ``select_option('7', ['a', 'b'])``. The env executes them with BrowserGym's
own ``HighLevelActionSet``; this module only knows their names, signatures and how to read them
out of text, so the trainer never imports a browser library.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Literal_ = str | int | float | bool | None | list


@dataclass(frozen=True)
class ActionSpec:
    """One action as a policy should see it in its prompt."""

    name: str
    signature: str
    description: str
    example: str


_SPECS = (
    ActionSpec("noop", "noop(wait_ms: float = 1000)", "Do nothing and wait.", "noop()"),
    ActionSpec(
        "click", "click(bid: str, button='left', modifiers=[])", "Click an element.", "click('13')"
    ),
    ActionSpec(
        "dblclick",
        "dblclick(bid: str, button='left', modifiers=[])",
        "Double-click an element.",
        "dblclick('12')",
    ),
    ActionSpec("hover", "hover(bid: str)", "Move the mouse over an element.", "hover('b8')"),
    ActionSpec(
        "fill",
        "fill(bid: str, value: str)",
        "Type text into an input or textarea.",
        "fill('21', 'LAF')",
    ),
    ActionSpec("clear", "clear(bid: str)", "Clear an input field.", "clear('996')"),
    ActionSpec("focus", "focus(bid: str)", "Focus an element.", "focus('b455')"),
    ActionSpec(
        "press",
        "press(bid: str, key_comb: str)",
        "Focus an element and press a key combination.",
        "press('88', 'Enter')",
    ),
    ActionSpec(
        "select_option",
        "select_option(bid: str, options: str | list[str])",
        "Select option(s) of a <select> element by label.",
        "select_option('48', 'blue')",
    ),
    ActionSpec(
        "scroll",
        "scroll(delta_x: float, delta_y: float)",
        "Scroll the page by pixels.",
        "scroll(0, 200)",
    ),
    ActionSpec(
        "drag_and_drop",
        "drag_and_drop(from_bid: str, to_bid: str)",
        "Drag one element onto another.",
        "drag_and_drop('56', '498')",
    ),
    ActionSpec(
        "upload_file",
        "upload_file(bid: str, file: str | list[str])",
        "Upload file(s) to a file input.",
        "upload_file('572', '/tmp/a.pdf')",
    ),
    ActionSpec(
        "mouse_click",
        "mouse_click(x: float, y: float, button='left')",
        "Click at page coordinates.",
        "mouse_click(120, 80)",
    ),
    ActionSpec(
        "mouse_dblclick",
        "mouse_dblclick(x: float, y: float, button='left')",
        "Double-click at page coordinates.",
        "mouse_dblclick(120, 80)",
    ),
    ActionSpec(
        "mouse_move", "mouse_move(x: float, y: float)", "Move the mouse.", "mouse_move(65, 44)"
    ),
    ActionSpec(
        "mouse_down",
        "mouse_down(x: float, y: float, button='left')",
        "Press a mouse button at coordinates.",
        "mouse_down(140, 40)",
    ),
    ActionSpec(
        "mouse_up",
        "mouse_up(x: float, y: float, button='left')",
        "Release a mouse button at coordinates.",
        "mouse_up(250, 120)",
    ),
    ActionSpec(
        "keyboard_press",
        "keyboard_press(key: str)",
        "Press a key combination.",
        "keyboard_press('Enter')",
    ),
    ActionSpec(
        "keyboard_type",
        "keyboard_type(text: str)",
        "Type text into the focused element.",
        "keyboard_type('Hello')",
    ),
    ActionSpec("go_back", "go_back()", "Navigate back.", "go_back()"),
    ActionSpec("go_forward", "go_forward()", "Navigate forward.", "go_forward()"),
    ActionSpec("goto", "goto(url: str)", "Open a URL.", "goto('http://example.com')"),
)
ACTIONS: dict[str, ActionSpec] = {spec.name: spec for spec in _SPECS}

#: BrowserGym's action subsets (``browsergym.core.action.highlevel.ACTION_SUBSETS``) that this
#: project supports, by the same names. ``noop`` is always allowed, as in BrowserGym.
SUBSETS: dict[str, tuple[str, ...]] = {
    "bid": (
        "scroll",
        "fill",
        "select_option",
        "click",
        "dblclick",
        "hover",
        "press",
        "focus",
        "clear",
        "drag_and_drop",
        "upload_file",
    ),
    "nav": ("go_back", "go_forward", "goto"),
    "miniwob_all": (
        "mouse_move",
        "mouse_click",
        "mouse_dblclick",
        "mouse_down",
        "mouse_up",
        "scroll",
        "click",
        "keyboard_press",
        "keyboard_type",
        "fill",
    ),
    "miniwob_liu18": ("click", "fill"),
    "miniwob_shi17": (
        "mouse_click",
        "mouse_dblclick",
        "mouse_down",
        "mouse_up",
        "scroll",
        "keyboard_press",
    ),
    "miniwob_humphreys22": (
        "mouse_move",
        "mouse_click",
        "mouse_dblclick",
        "mouse_down",
        "mouse_up",
        "scroll",
        "keyboard_press",
        "keyboard_type",
    ),
}

#: The default subset for MiniWoB: element-id actions, no navigation away from the task page.
DEFAULT_SUBSETS: tuple[str, ...] = ("bid",)


# action -> the name of its element parameter (bid, or from_bid for drag_and_drop)
_TARGETED = {
    spec.name: spec.signature.split("(", 1)[1].split(":", 1)[0]
    for spec in _SPECS
    if spec.signature.split("(", 1)[1].startswith(("bid:", "from_bid:"))
}


class ActionParseError(ValueError):
    """The text is not one well-formed, allowed action; the message says what is wrong."""


def allowed_actions(subsets: Sequence[str] = DEFAULT_SUBSETS) -> tuple[str, ...]:
    """Action names of the given BrowserGym subsets, ``noop`` first, without repeats."""
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown action subset(s) {unknown}; known: {sorted(SUBSETS)}")
    names = ["noop"] + [name for subset in subsets for name in SUBSETS[subset]]
    return tuple(dict.fromkeys(names))


def describe(subsets: Sequence[str] = DEFAULT_SUBSETS) -> str:
    """One line per allowed action (signature, what it does, an example) for a prompt."""
    return "\n".join(
        f"{ACTIONS[n].signature}: {ACTIONS[n].description} Example: {ACTIONS[n].example}"
        for n in allowed_actions(subsets)
    )


@dataclass(frozen=True)
class ParsedAction:
    """A validated action call; ``str()`` gives its canonical text."""

    name: str
    args: tuple[Literal_, ...]
    kwargs: tuple[tuple[str, Literal_], ...] = ()

    def __str__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"

    @property
    def target(self) -> str | None:
        """The bid of the element the action acts on (the first one for drag_and_drop)."""
        if self.name not in _TARGETED:
            return None
        value = self.args[0] if self.args else dict(self.kwargs).get(_TARGETED[self.name])
        return value if isinstance(value, str) else None


def _literal(node: ast.expr) -> Literal_:
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ActionParseError(
            f"arguments must be literals (strings, numbers, lists), got {ast.unparse(node)!r}"
        ) from exc
    if isinstance(value, (tuple, set, dict)):
        raise ActionParseError(f"unsupported argument type {type(value).__name__}")
    return list(value) if isinstance(value, list) else value


def parse_action(text: str, allowed: Iterable[str] | None = None) -> ParsedAction:
    """Parse exactly one action call, e.g. ``"click('13')"``.

    Raises ``ActionParseError`` with a message a policy (or a person) can act on.
    """
    allowed_set = set(allowed) if allowed is not None else set(ACTIONS)
    source = text.strip()
    if not source:
        raise ActionParseError("empty action; expected a call such as click('13')")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ActionParseError(
            f"malformed action {source[:200]!r}: expected one call such as click('13')"
        ) from exc
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ActionParseError(f"not an action call: {source[:200]!r}")
    name = call.func.id
    if name not in allowed_set:
        raise ActionParseError(
            f"action {name!r} is not allowed here; allowed: {', '.join(sorted(allowed_set))}"
        )
    if any(kw.arg is None for kw in call.keywords):
        raise ActionParseError("**kwargs are not supported in actions")
    return ParsedAction(
        name=name,
        args=tuple(_literal(a) for a in call.args),
        kwargs=tuple((kw.arg, _literal(kw.value)) for kw in call.keywords),
    )


_CALL_START = re.compile(r"\b([a-z_]+)\s*\(")


def extract_action(text: str, allowed: Iterable[str] | None = None) -> ParsedAction | None:
    """The first well-formed allowed action call anywhere in free text (a model's reply), or None.

    Scans each ``name(`` occurrence and tries the shortest balanced call that parses, so prose,
    code fences and trailing text around the action are ignored.
    """
    allowed_set = set(allowed) if allowed is not None else set(ACTIONS)
    for match in _CALL_START.finditer(text):
        if match.group(1) not in allowed_set:
            continue
        start = match.start(1)
        for end in range(match.end(), len(text)):
            if text[end] != ")":
                continue
            try:
                return parse_action(text[start : end + 1], allowed_set)
            except ActionParseError:
                continue
    return None
