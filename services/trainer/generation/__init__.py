"""Generation backends: who turns prompt token ids into the policy's next action.

``BACKENDS`` maps ``generation.backend.type`` to the class; each class builds itself with
``from_config(config, context)``. Training and evaluation build theirs the same way, through
``build_backend``. Add one = a module with a class implementing ``GenerationBackend``
(``base.py``) and a ``from_config`` + one line here + its config model in
``services/trainer/config.py`` (the ``BackendConfig`` union).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common.registry import Registry
from services.trainer.generation.base import GenerationBackend
from services.trainer.replicas import ReplicaSet

BACKENDS: Registry[GenerationBackend] = Registry(
    "generation backend",
    {
        "local": "services.trainer.generation.local:LocalBackend",
        "remote": "services.trainer.generation.remote:RemoteBackend",
        "scripted": "services.trainer.generation.scripted:ScriptedBackend",
        "random": "services.trainer.generation.random_policy:RandomBackend",
    },
)


@dataclass
class BackendContext:
    """What a backend may need beside its config: the policy's tokenizer, the in-process model
    (the local backend samples from the weights being trained), the trainer's version and the
    replicas its policy pushes go to (generation then uses only those at the pushed version)."""

    tokenizer: Any
    model: Callable[[], Any] | None = None
    policy_version: Callable[[], int] = lambda: 0
    replicas: ReplicaSet | None = None
    """The inference replicas the policy pushes go to, when the remote backend shares them."""
    pin_episodes: bool = False
    """An episode's later turns ask for the exact version its first turn got (rollouts that run
    ahead of the update, ``rollout.max_staleness`` > 0: a push mid-episode does not switch it)."""


def build_backend(config, context: BackendContext) -> GenerationBackend:
    """The backend for ``generation.backend`` (a ``BackendConfig``)."""
    return BACKENDS.build(config, context=context)
