"""The one reader of BrowserGym's accessibility-tree text, on the line shapes MiniWoB pages show."""

from __future__ import annotations

from services.protocol.axtree import element, elements, text

PAGE = (
    "RootWebArea 'Click Link Task', focused\n"
    "\t[13] generic, clickable=True\n"
    "\t\tStaticText 'Tortor'\n"
    "\t\t\tInlineTextBox 'Tortor'\n"
    "\t[17] LabelText ''\n"
    "\t\t[18] radio '42', checked='true'\n"
    "\t[21] textbox 'Username' value='ann'\n"
)


def test_elements_carry_bid_role_name_attributes_depth_and_the_text_below():
    link, label, radio, box = elements(PAGE)
    assert (link.bid, link.role, link.name, link.named, link.depth) == (
        "13",
        "generic",
        "",
        False,
        1,
    )
    assert link.text == "Tortor" and link.label == "Tortor"  # a link is named by its text
    assert (label.name, label.named) == ("", True)
    assert radio.depth == 2 and radio.checked and radio.label == "42"
    assert box.value == "ann" and box.label == "Username"


def test_lines_that_are_not_elements_and_a_name_written_back():
    assert element("RootWebArea 'x', focused") is None and element("\tStaticText 'y'") is None
    assert text("\t\tStaticText 'Tortor'") == "Tortor" and text("\t[13] generic") is None
    link = element("\t[13] generic, clickable=True")
    assert link is not None
    assert link.with_name("Tortor") == "\t[13] generic 'Tortor', clickable=True"
