"""Where the env pods are: a static list locally, Kubernetes EndpointSlices in a cluster.

A ``Discovery`` reports the current endpoint list and, while the trainer runs, every change;
the trainer feeds each list to ``EnvPool.set_endpoints`` (new pods join, removed ones drain).
``services/trainer/k8s_discovery.py`` (deployment owner) implements the same protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

EndpointsCallback = Callable[[list[str]], None]


@runtime_checkable
class Discovery(Protocol):
    async def current(self) -> list[str]:
        """The endpoints now (base URLs, e.g. ``http://10.0.0.7:8000``)."""
        ...

    async def watch(self, on_change: EndpointsCallback) -> None:
        """Call ``on_change`` with the full list whenever it changes; runs until cancelled."""
        ...


class StaticDiscovery:
    """A fixed list (local pods, or endpoints from the config); ``update`` replaces it."""

    def __init__(self, endpoints: Iterable[str]) -> None:
        self._endpoints = [u.rstrip("/") for u in endpoints]
        self._changed = asyncio.Event()

    async def current(self) -> list[str]:
        return list(self._endpoints)

    def update(self, endpoints: Iterable[str]) -> None:
        self._endpoints = [u.rstrip("/") for u in endpoints]
        self._changed.set()

    async def watch(self, on_change: EndpointsCallback) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            on_change(list(self._endpoints))
