"""Task families a pod serves, and the catalogue that resolves a task name to one of them.

``FAMILIES`` is the registry (``type`` in ``EnvServerConfig.task_families`` → class); a family
builds itself with ``from_config``. See ``base.py`` for the interface.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.registry import Registry
from services.env.families.base import TaskError, TaskFamily, TaskInstance
from services.protocol.generated import GENERATED, GeneratedTask
from services.protocol.tasks import (
    UnknownTaskError,
    canonical_task,
    family_task,
    qualified_name,
    task_family,
)

FAMILIES: Registry[TaskFamily] = Registry(
    "task family",
    {
        "miniwob": "services.env.families.miniwob:MiniWoBFamily",
        "pages": "services.env.families.pages:PageFolderFamily",
        "generated": "services.env.families.generated:GeneratedFamily",
    },
)

__all__ = ["FAMILIES", "TaskCatalog", "TaskError", "UnknownTaskError", "build_families"]


def build_families(configs: Sequence) -> list[TaskFamily]:
    """The configured families (``EnvServerConfig.task_families``), names unique."""
    families = [FAMILIES.build(config) for config in configs]
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise ValueError(f"task_families: two families share a name: {names}")
    return families


class TaskCatalog:
    """Every task of the pod's families, restricted to the allow-list, by canonical name; and
    the generated tasks that resets carry, when the pod serves the ``generated`` family."""

    def __init__(self, families: Sequence[TaskFamily], allowed: Sequence[str] | None = None):
        self.families = {family.name: family for family in families}
        served = {qualified_name(f.name, t) for f in self.families.values() for t in f.tasks()}
        names = served if allowed is None else [canonical_task(n) for n in allowed]
        unknown = sorted(n for n in names if n not in served)
        if unknown:
            raise UnknownTaskError(
                f"allow-list names unknown task(s) {unknown}; families served: "
                f"{', '.join(self.families)}"
            )
        self.allowed: tuple[str, ...] = tuple(sorted(dict.fromkeys(names)))

    def resolve(self, name: str) -> str:
        """The canonical name of ``name`` ('miniwob.click-test' → 'click-test'), if served."""
        canonical = canonical_task(name)
        if canonical not in self.allowed:
            known = task_family(canonical) in self.families and family_task(canonical) in (
                self.families[task_family(canonical)].tasks()
            )
            if task_family(canonical) == GENERATED and GENERATED in self.families:
                raise UnknownTaskError(
                    f"task {name!r} is a generated task: its reset must carry it "
                    "(options.generated)"
                )
            reason = "is not allowed on this pod" if known else "is unknown"
            raise UnknownTaskError(
                f"task {name!r} {reason}; valid tasks: {', '.join(self.allowed)}"
            )
        return canonical

    def instance(
        self, name: str, seed: int, generated: GeneratedTask | None = None
    ) -> TaskInstance:
        """A fresh instance of task ``name`` for one episode, or of the generated task a reset
        carried (``reset_task`` says which)."""
        canonical = self.reset_task(name, generated)
        if generated is not None:
            return self.families[GENERATED].instance_of(generated)
        return self.families[task_family(canonical)].instance(family_task(canonical), seed)

    def reset_task(self, name: str, generated: GeneratedTask | None = None) -> str:
        """The canonical name of the task a reset asks for: ``generated``'s when it carries
        one (this pod must serve the ``generated`` family and allow its page's task), else
        ``name``'s if served."""
        if generated is None:
            return self.resolve(name)
        self.resolve(generated.base_task)
        if GENERATED not in self.families:
            raise UnknownTaskError(
                f"task {generated.name!r}: this pod serves no generated tasks; add "
                f"{{type: generated}} to its task_families (families served: "
                f"{', '.join(self.families)})"
            )
        return generated.name

    def description(self, name: str) -> str:
        canonical = self.resolve(name)
        return self.families[task_family(canonical)].description(family_task(canonical))

    def by_family(self) -> dict[str, list[str]]:
        """Allowed tasks grouped by family (``/metadata``)."""
        grouped: dict[str, list[str]] = {name: [] for name in self.families}
        for task in self.allowed:
            grouped[task_family(task)].append(task)
        return grouped
