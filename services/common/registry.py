"""Extension points keyed by ``type`` in config: a registry maps each type to the class it builds.

Every pluggable component (generation backends, env discovery, curricula, reward sources, task
families) has a config model with a ``type`` literal (a member of a pydantic discriminated union,
so an unknown type fails when the config loads) and a class that builds itself with
``from_config(config, **context)``. The registry names that class as ``"module:Class"`` and imports
it only when it is built, so loading a config never imports torch, Playwright or vLLM.

Adding a component = one module (the class) + one registry line + its config model in the union.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``type`` name → ``"module:Class"`` of the component that type builds."""

    def __init__(self, kind: str, entries: Mapping[str, str]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def resolve(self, type_name: str) -> type[T]:
        """The class registered for ``type_name`` (imported now)."""
        try:
            target = self._entries[type_name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} type {type_name!r}; known: {', '.join(self._entries)}"
            ) from None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def build(self, config: Any, /, **context: Any) -> T:
        """``Class.from_config(config, **context)`` for ``config.type``."""
        return self.resolve(config.type).from_config(config, **context)
