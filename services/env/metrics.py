"""Prometheus series of one env pod (the dashboard and alerts in helm/browser-rl/files use them)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: they double the scrape size for nothing

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class EnvMetrics:
    """One registry per server so several servers (tests) never share series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes & co.
        r = self.registry
        self.sessions_active = Gauge(
            "browserenv_sessions_active", "Open WebSocket sessions.", registry=r
        )
        self.sessions_capacity = Gauge(
            "browserenv_sessions_capacity", "Maximum sessions this pod serves.", registry=r
        )
        self.ready = Gauge(
            "browserenv_ready", "1 when the pod accepts new sessions, else 0.", registry=r
        )
        self.resets = Counter("browserenv_resets", "Episode resets by task.", ["task"], registry=r)
        self.steps = Counter("browserenv_steps", "Steps by task.", ["task"], registry=r)
        self.reset_seconds = Histogram(
            "browserenv_reset_seconds",
            "Reset latency inside the pod.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "browserenv_step_seconds",
            "Step latency inside the pod.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.episodes = Counter(
            "browserenv_episodes",
            "Ended episodes by task and outcome (success|failure|truncated|abandoned).",
            ["task", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "browserenv_errors", "Error replies and failures by kind.", ["kind"], registry=r
        )
        self.browser_restarts = Counter(
            "browserenv_browser_restarts",
            "Chromium relaunches (crash or recycling).",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
