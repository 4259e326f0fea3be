"""Scripted solvers: the next correct action from a task's goal and its page, for demonstrations.

Each solver reads what a policy reads (the goal text and BrowserGym's accessibility tree, with
``[bid]`` marks) and returns the next action given the page as it is now (a filled field shows
``value='...'``, an open section ``expanded=True``), or None when it cannot tell. They serve the
``demonstrate`` message of the env protocol: behaviour cloning data for the tasks they cover,
written so that a policy could learn the same rule (find the element the goal names, by its
label or text, and act on its bid).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from services.protocol.axtree import Element, elements

_QUOTED = re.compile(r'"([^"]*)"')


def _named(page: list[Element], role: str | None, name: str) -> Element | None:
    wanted = name.strip().lower()
    for element in page:
        if role is not None and element.role != role:
            continue
        if wanted in (element.name.strip().lower(), element.text.strip().lower()):
            return element
    return None


def _click(element: Element | None) -> str | None:
    return f"click('{element.bid}')" if element is not None else None


def _fill(element: Element, value: str) -> str:
    return f"fill('{element.bid}', {value!r})"


def _holds(box: Element, text: str) -> bool:
    """The field shows ``text`` (a password field shows one bullet per character)."""
    return box.value in (text, "\u2022" * len(text))


def _quoted(goal: str) -> list[str]:
    return _QUOTED.findall(goal)


def click_test(goal: str, axtree: str) -> str | None:
    return _click(next((e for e in elements(axtree) if e.role == "button"), None))


def click_button(goal: str, axtree: str) -> str | None:
    (label,) = _quoted(goal)[:1] or [None]
    return _click(_named(elements(axtree), "button", label)) if label else None


def click_link(goal: str, axtree: str) -> str | None:
    (text,) = _quoted(goal)[:1] or [None]
    page = elements(axtree)
    return _click(_named(page, "link", text) or _named(page, "generic", text)) if text else None


def click_dialog(goal: str, axtree: str) -> str | None:
    return _click(_named(elements(axtree), "button", "Close"))


def click_dialog_2(goal: str, axtree: str) -> str | None:
    (label,) = _quoted(goal)[:1] or [None]
    if label is None:
        return None
    return _click(_named(elements(axtree), "button", "Close" if label == "x" else label))


def click_tab(goal: str, axtree: str) -> str | None:
    match = re.search(r"Tab #\d+", goal)
    return _click(_named(elements(axtree), "link", match.group(0))) if match else None


def click_collapsible(goal: str, axtree: str) -> str | None:
    page = elements(axtree)
    section = next((e for e in page if e.role == "tab" and e.name.startswith("Section")), None)
    if section is not None and not section.flag("expanded"):
        return _click(section)
    return _click(_named(page, "button", "Submit"))


def enter_text(goal: str, axtree: str) -> str | None:
    (text,) = _quoted(goal)[:1] or [None]
    page = elements(axtree)
    box = next((e for e in page if e.role == "textbox"), None)
    if text is None or box is None:
        return None
    if not _holds(box, text):
        return _fill(box, text)
    return _click(_named(page, "button", "Submit"))


def click_option(goal: str, axtree: str) -> str | None:
    match = re.match(r"Select (.+) and click Submit", goal)
    page = elements(axtree)
    option = _named(page, "radio", match.group(1)) if match else None
    if option is None:
        return None
    if not option.checked:
        return _click(option)
    return _click(_named(page, "button", "Submit"))


def login_user(goal: str, axtree: str) -> str | None:
    quoted = _quoted(goal)
    page = elements(axtree)
    boxes = [e for e in page if e.role == "textbox"]
    if len(quoted) < 2 or len(boxes) < 2:
        return None
    for box, value in zip(boxes, quoted[:2], strict=True):
        if not _holds(box, value):
            return _fill(box, value)
    return _click(_named(page, "button", "Login"))


SOLVERS: dict[str, Callable[[str, str], str | None]] = {
    "click-test": click_test,
    "click-button": click_button,
    "click-link": click_link,
    "click-dialog": click_dialog,
    "click-dialog-2": click_dialog_2,
    "click-tab": click_tab,
    "click-collapsible": click_collapsible,
    "click-collapsible-nodelay": click_collapsible,
    "enter-text": enter_text,
    "click-option": click_option,
    "login-user": login_user,
}
