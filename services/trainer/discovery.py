"""Where the env pods are: a static list locally, Kubernetes EndpointSlices in a cluster.

A ``Discovery`` reports the current endpoint list and, while the trainer runs, every change; the
rollout stack feeds each list to ``EnvPool.set_endpoints`` (new pods join, removed ones drain), in
training and in evaluation alike. ``DISCOVERIES`` maps ``env.discovery.type`` to the class; add
one = a module with a class that has ``from_config``, ``current`` and ``watch`` + one line here +
its config model in the ``DiscoveryConfig`` union (services/trainer/config.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from services.common.registry import Registry

EndpointsCallback = Callable[[list[str]], None]


@runtime_checkable
class Discovery(Protocol):
    async def current(self) -> list[str]:
        """The endpoints now (base URLs, e.g. ``http://10.0.0.7:8000``)."""
        ...

    async def watch(self, on_change: EndpointsCallback) -> None:
        """Call ``on_change`` with the full list whenever it changes; runs until cancelled."""
        ...


DISCOVERIES: Registry[Discovery] = Registry(
    "env discovery",
    {
        "static": "services.trainer.discovery:StaticDiscovery",
        "kubernetes": "services.trainer.k8s_discovery:EndpointSliceDiscovery",
    },
)


def build_discovery(config, local_endpoints: Sequence[str] = ()) -> Discovery:
    """The discovery for ``env.discovery``; ``local_endpoints`` are pods this process started."""
    return DISCOVERIES.build(config, local_endpoints=list(local_endpoints))


class StaticDiscovery:
    """A fixed list (local pods, or endpoints from the config); ``update`` replaces it."""

    def __init__(self, endpoints: Iterable[str]) -> None:
        self._endpoints = [u.rstrip("/") for u in endpoints]
        self._changed = asyncio.Event()

    @classmethod
    def from_config(cls, config, *, local_endpoints=()) -> StaticDiscovery:
        """From ``StaticDiscoveryConfig``: its endpoints plus the local pods."""
        return cls([*config.endpoints, *local_endpoints])

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
