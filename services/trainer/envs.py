"""Where a run's env pods come from: local pods this process starts, and the configured discovery.

Training and evaluation both call ``env_pods``: with ``env.local.pods > 0`` it starts that many
env server processes on loopback (the cluster shape as processes; stopped on exit) and yields
``EnvPods``, whose ``discovery()`` builds a fresh discovery of ``env.discovery`` for each rollout
stack: a static list including the local pods, or a live watch of the cluster (Kubernetes
EndpointSlices), so an evaluation after training sees the pods of now, not of the start.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from services.trainer.config import TrainerConfig
from services.trainer.discovery import Discovery, build_discovery

log = logging.getLogger(__name__)


@contextlib.contextmanager
def local_env_pods(cfg: TrainerConfig) -> Iterator[list[str]]:
    """Start ``env.local.pods`` local env pods (if any) for the run; yield their URLs."""
    if cfg.env.local.pods == 0:
        yield []
        return
    from services.env.local import start_local_env_pods

    pod = cfg.local_pod_config().model_dump(exclude={"host", "port", "max_sessions"})
    log_dir = cfg.run.output_dir / "env-logs"
    log.info("starting %d local env pods (logs in %s)", cfg.env.local.pods, log_dir)
    with start_local_env_pods(
        cfg.env.local.pods,
        max_sessions=cfg.env.local.max_sessions,
        ready_timeout_s=300.0,  # Chromium starts slowly on a busy 2-core machine
        log_dir=log_dir,
        **pod,
    ) as urls:
        yield list(urls)


@dataclass
class EnvPods:
    """The configured discovery plus the local pods of this run."""

    config: Any  # DiscoveryConfig
    local: list[str] = field(default_factory=list)

    def discovery(self) -> Discovery:
        """A new discovery (each rollout stack watches on its own event loop)."""
        return build_discovery(self.config, self.local)


@contextlib.contextmanager
def env_pods(cfg: TrainerConfig) -> Iterator[EnvPods]:
    """The run's env pods, its local ones started for as long as the context lasts."""
    with local_env_pods(cfg) as local:
        yield EnvPods(cfg.env.discovery, local)
