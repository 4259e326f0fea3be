"""Goal and checker of the pick-color page task (the contract: services/env/families/pages.py).

``goal(seed)`` returns the goal text and the params the page is drawn from; ``check(page,
params)`` reads the final DOM: ``None`` while nothing was picked, else 1.0 for the right colour.
"""

import random
import re

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
_PICKED = re.compile(r'data-picked="([a-z]+)"')


def goal(seed: int) -> dict:
    rng = random.Random(seed)
    shown = rng.sample(COLOURS, 4)  # which squares, in which order: bids change with the seed
    target = rng.choice(shown)
    return {"text": f"Click the {target} square.", "shown": shown, "target": target}


def check(page, params: dict) -> float | None:
    picked = _PICKED.search(page.html)
    if picked is None:
        return None
    return 1.0 if picked.group(1) == params["target"] else 0.0
