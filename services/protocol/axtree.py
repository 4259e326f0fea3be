"""Reading a page the way the policy reads it: BrowserGym's accessibility-tree text.

An observation's ``axtree_txt`` (BrowserGym's ``flatten_axtree_to_str``) has one line per node,
indented with tabs by depth: ``[14] button 'Submit', clickable=True`` for an element the policy
can act on (its bid in brackets, its role, its name when it has one, then attributes), and
``StaticText 'Tortor'`` for text. Everything that reads pages (the scripted solvers, the prompt
compaction, the elements shown in the report's frames) parses them here, one way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_ELEMENT = re.compile(
    r"^(?P<indent>\t*)\[(?P<bid>[^\]]+)\] (?P<role>\w+)(?: '(?P<name>[^']*)')?(?P<attrs>.*)$"
)
_TEXT = re.compile(r"^\t*StaticText '(?P<text>[^']*)'$")


@dataclass(frozen=True)
class Element:
    """One ``[bid]`` line of a page."""

    bid: str
    role: str
    name: str
    attrs: str
    """The rest of the line after the name: ``, clickable=True``, `` value='x'``..."""
    depth: int
    named: bool = True
    """False when the line carries no name at all (``[14] generic, clickable=True``)."""
    text: str = ""
    """The first non-empty text line just below (the label of clickable generics and options);
    filled in by ``elements``."""

    @property
    def label(self) -> str:
        """What a person would call it: its name, else its text."""
        return self.name or self.text

    @property
    def value(self) -> str | None:
        match = re.search(r"value='([^']*)'", self.attrs)
        return match.group(1) if match else None

    def flag(self, name: str) -> bool:
        return f"{name}=True" in self.attrs

    @property
    def checked(self) -> bool:
        return "checked='true'" in self.attrs or self.flag("checked")

    def with_name(self, name: str) -> str:
        """This element's line with ``name`` as its name."""
        indent = "\t" * self.depth
        return f"{indent}[{self.bid}] {self.role} {name!r}{self.attrs}"


def element(line: str) -> Element | None:
    """The element a line shows, or None (text, the page root, anything else)."""
    match = _ELEMENT.match(line)
    if match is None:
        return None
    return Element(
        bid=match["bid"],
        role=match["role"],
        name=match["name"] or "",
        attrs=match["attrs"],
        depth=len(match["indent"]),
        named=match["name"] is not None,
    )


def text(line: str) -> str | None:
    """The text of a ``StaticText`` line, or None."""
    match = _TEXT.match(line)
    return match["text"] if match else None


def depth(line: str) -> int:
    return len(line) - len(line.lstrip("\t"))


def elements(axtree: str) -> list[Element]:
    """Every element of a page, each with the first non-empty text within 3 lines below it."""
    lines = axtree.splitlines()
    found = []
    for i, line in enumerate(lines):
        node = element(line)
        if node is None:
            continue
        below = (text(later) for later in lines[i + 1 : i + 4])
        label = next((t for t in below if t is not None and t.strip()), "")
        found.append(replace(node, text=label))
    return found
