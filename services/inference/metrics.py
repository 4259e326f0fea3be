"""Prometheus series of the inference service, exported beside vLLM's own ``vllm:*`` series.

They live in prometheus_client's default registry, which vLLM's ``/metrics`` route serves, so one
scrape of the vLLM pod returns both.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

POLICY_VERSION = Gauge(
    "inference_policy_version", "Policy version served now (0 = the initial weights)."
)
READY = Gauge(
    "inference_ready", "1 when generations may run; 0 while weights are swapped or after a failure."
)
WEIGHT_UPDATE_SECONDS = Histogram(
    "inference_weight_update_seconds",
    "Receive-to-active time of a policy update.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
WEIGHT_UPDATES = Counter(
    "inference_weight_updates_total",
    "Policy updates by kind (adapter|full) and result (ok|rejected|failed).",
    ["kind", "result"],
)
