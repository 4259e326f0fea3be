"""Episode frames: each turn's page as the env pod rendered it, and the element the action hit.

When a request asks for frames (``EpisodeRequest.frames``), the env attaches a compact
screenshot (its JPEG) and the boxes of the elements with a bid to every observation. A turn then
keeps the page it acted on with the element its action named (bid, role and label from the
accessibility tree, box from the page), and the episode keeps the page its last action left.
``FrameWriter`` puts them on disk beside an evaluation (``eval/frames/<policy>/<task>-<seed>/``)
or a training run (``frames/step-<n>/``): one image per turn, and an animated GIF of the episode
with the touched element outlined, to share. ``report.html`` shows them as filmstrips.
"""

from __future__ import annotations

import base64
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.protocol.actions import ActionParseError, parse_action
from services.protocol.axtree import elements
from services.protocol.env import BrowserObservation

if TYPE_CHECKING:
    from services.trainer.rollout import Episode

OUTLINE = (230, 0, 60)
GIF_FRAME_MS = 900


@dataclass
class Target:
    """The element an action named, as the page showed it."""

    bid: str
    role: str = ""
    name: str = ""
    box: list[float] | None = None
    """[x, y, width, height] in the screenshot's pixels; None when it was not visible."""


@dataclass
class Frame:
    image: str
    """Base64 screenshot, as the env sent it."""
    format: str
    target: Target | None = None


def target_of(obs: BrowserObservation, action: str) -> Target | None:
    """The element ``action`` names on the page of ``obs`` (None: no element, or no action)."""
    try:
        bid = parse_action(action).target
    except ActionParseError:
        return None
    if bid is None:
        return None
    element = next((e for e in elements(obs.axtree_txt) if e.bid == bid), None)
    return Target(
        bid=bid,
        role=element.role if element else "",
        name=element.label if element else "",
        box=(obs.element_boxes or {}).get(bid),
    )


def frame_of(obs: BrowserObservation, action: str | None = None) -> Frame | None:
    """The page of ``obs`` (with the element ``action`` hit), or None without a screenshot."""
    if not obs.screenshot:
        return None
    target = target_of(obs, action) if action is not None else None
    return Frame(obs.screenshot, obs.screenshot_format or "png", target)


class FrameWriter:
    """Frames of played episodes as files under ``root/folder``; the index it returns (paths
    relative to ``root``, the folder of the file that lists the episodes) goes into
    ``eval.json`` or ``episodes.jsonl``, and from there into the report."""

    def __init__(self, root: Path, folder: str) -> None:
        self.root = Path(root)
        self.folder = self.root / folder

    def write(self, episode: Episode) -> dict[str, Any] | None:
        """The episode's frames on disk, or None when it has none: ``{"gif", "turns"}``, each
        turn ``{"file", "action", "error", "target"}`` and then the page the last action left
        (``"action": None``)."""
        shots = [(t.frame, t.action, t.error) for t in episode.turn_log if t.frame is not None]
        if episode.final_frame is not None:
            shots.append((episode.final_frame, None, ""))
        if not shots:
            return None
        here = self.folder / f"{episode.task}-{episode.seed}"
        here.mkdir(parents=True, exist_ok=True)
        turns, images = [], []
        for n, (frame, action, error) in enumerate(shots, start=1):
            data = base64.b64decode(frame.image)
            path = here / f"turn-{n}.{'jpg' if frame.format == 'jpeg' else frame.format}"
            path.write_bytes(data)
            images.append(_outlined(data, frame.target))
            target = asdict(frame.target) if frame.target else None
            turns.append(
                {
                    "file": str(path.relative_to(self.root)),
                    "action": action,
                    "error": error,
                    "target": target,
                }
            )
        gif = here / "episode.gif"
        images[0].save(gif, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
        return {"gif": str(gif.relative_to(self.root)), "turns": turns}


def _outlined(data: bytes, target: Target | None):
    from PIL import Image, ImageDraw

    image = Image.open(io.BytesIO(data)).convert("RGB")
    if target is not None and target.box is not None:
        x, y, w, h = target.box
        corners = [x - 2, y - 2, x + w + 1, y + h + 1]
        ImageDraw.Draw(image).rectangle(corners, outline=OUTLINE, width=2)
    return image
