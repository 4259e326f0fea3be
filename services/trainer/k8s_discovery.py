"""Env pods on Kubernetes: watch the env Service's EndpointSlices and report the ready pods.

``kubectl scale deployment/<release>-browser-rl-env --replicas=N`` adds or removes pods; the
EndpointSlice controller lists each pod with its readiness, and this watcher turns that into
the list of base URLs the trainer's ``EnvPool`` uses (``set_endpoints``): a new pod is used as
soon as its readiness probe passes (one watch event, well under a second after the API server
sees it); a pod that turns not-ready (full, broken) or terminates drops out of the list, so the
pool drains it (running episodes finish or are replayed elsewhere).

It is an informer in small: LIST (state + resourceVersion), then WATCH from there; every time the
watch ends (server timeout, 410 Gone, connection loss) it relists, so a missed event can never
leave a stale pod behind. While the API server is unreachable, the last known list stays in use:
training goes on with the pods it has. Needs only get/list/watch on endpointslices in its own
namespace (the chart's Role); in a pod, credentials come from the service account.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes.aio import client, config
from kubernetes.aio.watch import Watch

from services.trainer.discovery import EndpointsCallback

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace() -> str:
    """The pod's namespace: POD_NAMESPACE (downward API) or the service account's file."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if NAMESPACE_FILE.is_file():
        return NAMESPACE_FILE.read_text().strip()
    raise RuntimeError(
        "kubernetes discovery: no namespace given and neither POD_NAMESPACE nor "
        f"{NAMESPACE_FILE} is available (not running in a pod?)"
    )


def ready_urls(endpoint_slice: Mapping[str, Any], port_name: str | None, scheme: str) -> set[str]:
    """Base URLs of the endpoints of one EndpointSlice that may take new sessions.

    Kubernetes semantics: ``conditions.ready`` unset means ready; a terminating endpoint is out
    even if it still reports ready (it is draining).
    """
    ports = endpoint_slice.get("ports") or []
    chosen = [p for p in ports if port_name is None or p.get("name") == port_name]
    if not chosen or chosen[0].get("port") is None:
        return set()
    port = int(chosen[0]["port"])
    urls = set()
    for endpoint in endpoint_slice.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        for address in (endpoint.get("addresses") or [])[:1]:  # all addresses are one pod
            host = f"[{address}]" if ":" in address else address
            urls.add(f"{scheme}://{host}:{port}")
    return urls


class EndpointSliceDiscovery:
    """``Discovery`` (services/trainer/discovery.py) over a Service's EndpointSlices.

    ``api_client``: a ``kubernetes.aio.client.ApiClient``; None loads the in-cluster config
    (service account), falling back to ``~/.kube/config`` outside a pod.
    """

    def __init__(
        self,
        service: str,
        namespace: str | None = None,
        *,
        port_name: str | None = "http",
        scheme: str = "http",
        api_client: client.ApiClient | None = None,
        watch_timeout_s: int = 240,
        retry_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not service:
            raise ValueError("kubernetes discovery needs the env Service's name")
        self.service = service
        self.namespace = namespace or own_namespace()
        self.port_name = port_name
        self.scheme = scheme
        self.watch_timeout_s = watch_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self._api_client = api_client
        self._owns_client = api_client is None
        self._slices: dict[str, set[str]] = {}
        self._reported: list[str] | None = None
        self._watching = False

    @classmethod
    def from_config(cls, config, *, local_endpoints=()) -> EndpointSliceDiscovery:
        """From ``KubernetesDiscoveryConfig`` (local pods have no place in a cluster)."""
        del local_endpoints
        return cls(config.service, config.namespace, port_name=config.port_name)

    # --- Discovery protocol -----------------------------------------------------------------

    async def current(self) -> list[str]:
        """The ready endpoints now (one LIST). Raises when the API refuses or cannot be reached:
        a trainer that cannot see its env pods at start should say so and stop."""
        try:
            await self._relist()
        finally:
            if not self._watching:  # a one-off call (its own event loop): leave no open session
                await self.close()
        return self._endpoints()

    async def watch(self, on_change: EndpointsCallback) -> None:
        """Report the ready endpoints whenever they change, until cancelled. Never raises for
        API trouble: it logs, backs off and relists; the last list stays in force meanwhile."""
        backoff = self.retry_backoff_s
        self._watching = True
        try:
            while True:
                try:
                    resource_version = await self._relist()
                    self._report(on_change)
                    await self._follow(resource_version, on_change)
                    backoff = self.retry_backoff_s  # a clean end (server timeout): relist now
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # API down, 410 Gone, bad credentials: retry
                    log.warning(
                        "EndpointSlice watch for %s/%s failed (%s); retrying in %.1f s",
                        self.namespace,
                        self.service,
                        exc,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
        finally:
            self._watching = False
            await self.close()

    async def close(self) -> None:
        if self._owns_client and self._api_client is not None:
            await self._api_client.close()
            self._api_client = None

    # --- internals --------------------------------------------------------------------------

    async def _api(self) -> client.DiscoveryV1Api:
        if self._api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                await config.load_kube_config()
            self._api_client = client.ApiClient()
        return client.DiscoveryV1Api(self._api_client)

    def _selector(self) -> str:
        return f"{SERVICE_NAME_LABEL}={self.service}"

    def _ours(self, endpoint_slice: Mapping[str, Any]) -> bool:
        labels = (endpoint_slice.get("metadata") or {}).get("labels") or {}
        return labels.get(SERVICE_NAME_LABEL) == self.service

    async def _relist(self) -> str | None:
        """Replace the known state with a fresh LIST; returns its resourceVersion."""
        api = await self._api()
        response = await api.list_namespaced_endpoint_slice_without_preload_content(
            self.namespace, label_selector=self._selector(), _request_timeout=30
        )
        try:
            if response.status >= 400:
                hint = (
                    " (RBAC: the trainer's ServiceAccount needs get/list/watch on endpointslices)"
                    if response.status in (401, 403)
                    else ""
                )
                raise RuntimeError(
                    f"LIST endpointslices of Service {self.namespace}/{self.service}: "
                    f"HTTP {response.status}{hint}"
                )
            listing = json.loads(await response.read())
        finally:
            response.release()
        self._slices = {
            item["metadata"]["name"]: ready_urls(item, self.port_name, self.scheme)
            for item in listing.get("items") or []
            if self._ours(item)
        }
        return (listing.get("metadata") or {}).get("resourceVersion")

    async def _follow(self, resource_version: str | None, on_change: EndpointsCallback) -> None:
        """Apply WATCH events until the server ends the watch."""
        api = await self._api()
        kwargs: dict[str, Any] = {
            "label_selector": self._selector(),
            "timeout_seconds": self.watch_timeout_s,
            "allow_watch_bookmarks": True,
            "_request_timeout": self.watch_timeout_s + 30,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        # The context closes the streaming response, also when the trainer cancels the watch.
        async with Watch().stream(
            api.list_namespaced_endpoint_slice, self.namespace, **kwargs
        ) as events:
            async for event in events:
                kind, obj = event["type"], event["raw_object"]
                if kind == "BOOKMARK" or not self._ours(obj):
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    self._slices.pop(name, None)
                else:  # ADDED, MODIFIED
                    self._slices[name] = ready_urls(obj, self.port_name, self.scheme)
                self._report(on_change)

    def _endpoints(self) -> list[str]:
        return sorted(set().union(*self._slices.values()))

    def _report(self, on_change: EndpointsCallback) -> None:
        endpoints = self._endpoints()
        if endpoints != self._reported:
            log.info("env endpoints from EndpointSlices: %s", endpoints)
            self._reported = endpoints
            on_change(list(endpoints))
