"""The MiniWoB task catalogue: BrowserGym's task classes by canonical name, plus the allow-list."""

from __future__ import annotations

from pathlib import Path

import miniwob
from browsergym.miniwob import ALL_MINIWOB_TASKS
from browsergym.miniwob.base import AbstractMiniwobTask

TASK_CLASSES: dict[str, type[AbstractMiniwobTask]] = {
    cls.subdomain: cls for cls in ALL_MINIWOB_TASKS
}
_PREFIXES = ("browsergym/miniwob.", "miniwob.")


class UnknownTaskError(ValueError):
    """The requested task does not exist or is not allowed on this pod."""


def miniwob_file_url() -> str:
    """``file://`` URL of the task pages shipped in the ``miniwob`` wheel (trailing slash)."""
    return (Path(miniwob.__file__).parent / "html" / "miniwob").as_uri() + "/"


class TaskCatalog:
    """Resolves task names against the pod's allow-list."""

    def __init__(self, allowed: list[str] | None = None) -> None:
        names = list(TASK_CLASSES) if allowed is None else [self._strip(n) for n in allowed]
        unknown = sorted(n for n in names if n not in TASK_CLASSES)
        if unknown:
            raise UnknownTaskError(
                f"allow-list names unknown MiniWoB task(s) {unknown}; known: {sorted(TASK_CLASSES)}"
            )
        self.allowed: tuple[str, ...] = tuple(sorted(dict.fromkeys(names)))

    @staticmethod
    def _strip(name: str) -> str:
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                return name[len(prefix) :]
        return name

    def resolve(self, name: str) -> type[AbstractMiniwobTask]:
        """The task class for ``name`` ('click-test', 'miniwob.click-test', ...)."""
        canonical = self._strip(name.strip())
        if canonical not in self.allowed:
            reason = "is not allowed on this pod" if canonical in TASK_CLASSES else "is unknown"
            raise UnknownTaskError(
                f"task {name!r} {reason}; valid tasks: {', '.join(self.allowed)}"
            )
        return TASK_CLASSES[canonical]
