"""Whole scripted plans for a few MiniWoB tasks, built from the solvers in ``solvers.py``.

Used by the env tests (an oracle must reach reward 1 through the service) and by
``scripts/bench_env.py`` (a cheap, deterministic policy to load the pods with). The plan is the
solver asked again as if each fill had landed, so it needs no browser between actions.
"""

from __future__ import annotations

import re

from services.env.families.miniwob.solvers import SOLVERS
from services.protocol.actions import parse_action
from services.protocol.axtree import Element, elements
from services.protocol.env import BrowserObservation

_MAX_PLAN = 8


def solve(obs: BrowserObservation) -> list[str]:
    """The actions that solve the task of a fresh observation: its solver's fills, then the one
    click that ends it (click-test, click-button, click-link, enter-text, login-user, ...);
    ``LookupError`` for tasks without a solver or pages it cannot read."""
    solver = SOLVERS.get(obs.task)
    if solver is None:
        raise LookupError(f"no scripted solver for {obs.task!r}")
    tree, plan = obs.axtree_txt, []
    for _ in range(_MAX_PLAN):
        action = solver(obs.goal, tree)
        if action is None:
            raise LookupError(f"the {obs.task} solver cannot read the page:\n{obs.axtree_txt}")
        plan.append(action)
        if not action.startswith("fill("):
            return plan
        tree = _filled(tree, action)
    raise LookupError(f"no plan within {_MAX_PLAN} actions for {obs.task!r}")


def _filled(tree: str, fill: str) -> str:
    """The tree as it reads once ``fill`` has landed (the field shows its value)."""
    bid, value = parse_action(fill).args
    line = re.compile(rf"^(\s*\[{re.escape(str(bid))}\] textbox '[^']*')(.*)$", re.M)
    return line.sub(lambda m: f"{m[1]} value={value!r}{m[2]}", tree, count=1)


def _first(obs: BrowserObservation, role: str, name: str | None = None) -> Element:
    for node in elements(obs.axtree_txt):
        if node.role == role and (name is None or node.name.lower() == name.lower()):
            return node
    raise LookupError(f"no {role} {name or ''} in the page:\n{obs.axtree_txt}")


_DATE = re.compile(r"\d{2}/\d{2}/\d{4}")
_ROUTE = re.compile(r"from: (?P<src>.+?) to: (?P<dst>.+?) on")


def book_flight_actions(obs: BrowserObservation) -> list[str]:
    """Fill the book-flight search form and search (the next page needs a fresh look)."""
    boxes = [n for n in elements(obs.axtree_txt) if n.role == "textbox"]
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
    for node in elements(obs.axtree_txt):
        if node.role == "button" and node.name.lower().startswith("book flight"):
            return f"click('{node.bid}')"
    return "noop(0)"
