"""Scripted policies for a few MiniWoB tasks, read off the observation like a policy would.

Used by the env tests (an oracle must reach reward 1 through the service) and by
``scripts/bench_env.py`` (a cheap, deterministic policy to load the pods with).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from services.protocol.env import BrowserObservation

_NODE = re.compile(r"^\s*\[(?P<bid>[a-zA-Z0-9]+)\] (?P<role>\w+) '(?P<name>[^']*)'", re.M)
_QUOTED = re.compile(r'"([^"]*)"')


@dataclass(frozen=True)
class Node:
    bid: str
    role: str
    name: str


def nodes(axtree_txt: str) -> list[Node]:
    """Elements with a bid in BrowserGym's flattened accessibility tree."""
    return [Node(m["bid"], m["role"], m["name"]) for m in _NODE.finditer(axtree_txt)]


def _first(obs: BrowserObservation, role: str, name: str | None = None) -> Node:
    for node in nodes(obs.axtree_txt):
        if node.role == role and (name is None or node.name.lower() == name.lower()):
            return node
    raise LookupError(f"no {role} {name or ''} in the page:\n{obs.axtree_txt}")


def solve(obs: BrowserObservation) -> list[str]:
    """The actions that solve the task of a fresh observation (click-test, click-button,
    click-link, enter-text, login-user); ``LookupError`` for other tasks."""
    quoted = _QUOTED.findall(obs.goal)
    if obs.task == "click-test":
        return [f"click('{_first(obs, 'button').bid}')"]
    if obs.task == "click-button":
        return [f"click('{_first(obs, 'button', quoted[0]).bid}')"]
    if obs.task == "click-link":
        return [f"click('{_clickable_with_text(obs, quoted[0])}')"]
    if obs.task == "enter-text":
        box, submit = _first(obs, "textbox"), _first(obs, "button", "Submit")
        return [f"fill('{box.bid}', {quoted[0]!r})", f"click('{submit.bid}')"]
    if obs.task == "login-user":
        boxes = [n for n in nodes(obs.axtree_txt) if n.role == "textbox"]
        login = _first(obs, "button", "Login")
        return [
            f"fill('{boxes[0].bid}', {quoted[0]!r})",
            f"fill('{boxes[1].bid}', {quoted[1]!r})",
            f"click('{login.bid}')",
        ]
    raise LookupError(f"no scripted solver for {obs.task!r}")


def _clickable_with_text(obs: BrowserObservation, text: str) -> str:
    """The bid of the clickable element whose first line of text is ``text``."""
    lines = obs.axtree_txt.splitlines()
    for line, child in itertools.pairwise(lines):
        clickable = re.match(r"^\s*\[(\w+)\] generic, clickable", line)
        if clickable and child.strip() == f"StaticText {text!r}":
            return clickable[1]
    raise LookupError(f"no clickable element with text {text!r}:\n{obs.axtree_txt}")


_DATE = re.compile(r"\d{2}/\d{2}/\d{4}")
_ROUTE = re.compile(r"from: (?P<src>.+?) to: (?P<dst>.+?) on")


def book_flight_actions(obs: BrowserObservation) -> list[str]:
    """Fill the book-flight search form and search (the next page needs a fresh look)."""
    boxes = [n for n in nodes(obs.axtree_txt) if n.role == "textbox"]
    route, date = _ROUTE.search(obs.goal), _DATE.search(obs.goal)
    search = _first(obs, "button", "Search")
    return [
        f"fill('{boxes[0].bid}', {route['src']!r})",
        f"fill('{boxes[1].bid}', {route['dst']!r})",
        f"fill('{boxes[2].bid}', {date[0]!r})",
        f"click('{search.bid}')",
    ]


def book_first_flight(obs: BrowserObservation) -> str:
    """Book the first listed flight (a plausible but often wrong choice: reward 0 or 1)."""
    for node in nodes(obs.axtree_txt):
        if node.role == "button" and node.name.lower().startswith("book flight"):
            return f"click('{node.bid}')"
    return "noop(0)"
