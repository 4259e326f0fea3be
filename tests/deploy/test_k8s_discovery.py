"""EndpointSliceDiscovery against an HTTP-level Kubernetes API (kmock's emulator: real HTTP, the
real `kubernetes` client, LIST + WATCH of discovery.k8s.io/v1 EndpointSlices), feeding the
trainer's EnvPool while episodes run on real env pods (real Chromium).

No cluster can run here, so kmock plays the API server and the test plays the EndpointSlice
controller: it creates, marks not-ready and deletes slices the way `kubectl scale` would make
Kubernetes do, and stops the removed pod's process (SIGTERM) as the kubelet would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import kmock
import pytest
from kubernetes.aio import client

from services.env.families.miniwob.oracle import solve
from services.protocol.env import BrowserResetOptions
from services.trainer.env_pool import EnvInfraError, EnvPool
from services.trainer.k8s_discovery import EndpointSliceDiscovery, ready_urls

NAMESPACE = "train"
MAX_TURNS = 5
SERVICE = "rl-browser-rl-env"


def endpoint_slice(name: str, url: str, *, ready: bool = True, service: str = SERVICE) -> dict:
    """An EndpointSlice as the controller writes it: one pod, its readiness, the named port.
    (Local pods share 127.0.0.1 and differ by port, so each gets its own slice.)"""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": int(port), "protocol": "TCP"}],
        "endpoints": [{"addresses": [host], "conditions": endpoint_conditions(ready)}],
    }


def endpoint_conditions(ready: bool) -> dict:
    return {"ready": ready, "serving": ready, "terminating": False}


@contextlib.asynccontextmanager
async def kubernetes_api():
    """kmock's Kubernetes emulator on a loopback port; yields (API for the test, client config)."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["discovery.k8s.io/v1/endpointslices"].kind = "EndpointSlice"
        configuration = client.Configuration(host=str(server.url).rstrip("/"))
        async with client.ApiClient(configuration) as api_client:
            yield client.DiscoveryV1Api(api_client), configuration


async def wait_for(predicate, timeout_s: float, what: str) -> float:
    """Seconds until ``predicate()`` holds; fails the test after ``timeout_s``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"timed out after {timeout_s} s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def test_ready_urls_follow_kubernetes_endpoint_semantics():
    base = endpoint_slice("a", "http://10.0.0.7:8000")
    assert ready_urls(base, "http", "http") == {"http://10.0.0.7:8000"}
    unset = {**base, "endpoints": [{"addresses": ["10.0.0.8"], "conditions": {}}]}
    assert ready_urls(unset, "http", "http") == {"http://10.0.0.8:8000"}  # unset = ready
    terminating = {
        **base,
        "endpoints": [
            {"addresses": ["10.0.0.9"], "conditions": {"ready": True, "terminating": True}}
        ],
    }
    assert ready_urls(terminating, "http", "http") == set()
    ipv6 = {**base, "endpoints": [{"addresses": ["fd00::5"]}]}
    assert ready_urls(ipv6, "http", "http") == {"http://[fd00::5]:8000"}
    assert ready_urls(base, "metrics", "http") == set()  # no such named port
    assert ready_urls({**base, "ports": None}, "http", "http") == set()


async def test_watch_reports_ready_endpoints_and_ignores_other_services():
    async with kubernetes_api() as (api, configuration):
        seen: list[list[str]] = []
        async with client.ApiClient(configuration) as discovery_client:
            discovery = EndpointSliceDiscovery(SERVICE, NAMESPACE, api_client=discovery_client)
            assert await discovery.current() == []
            await api.create_namespaced_endpoint_slice(
                NAMESPACE, endpoint_slice("a", "http://10.0.0.1:8000")
            )
            task = asyncio.create_task(discovery.watch(seen.append))
            await wait_for(lambda: seen == [["http://10.0.0.1:8000"]], 5, "initial list")
            await api.create_namespaced_endpoint_slice(
                NAMESPACE, endpoint_slice("other", "http://10.9.9.9:8000", service="another-svc")
            )
            await api.create_namespaced_endpoint_slice(
                NAMESPACE, endpoint_slice("b", "http://10.0.0.2:8000", ready=False)
            )
            await api.patch_namespaced_endpoint_slice(
                "b",
                NAMESPACE,
                {
                    "endpoints": [
                        {"addresses": ["10.0.0.2"], "conditions": endpoint_conditions(True)}
                    ]
                },
            )
            await wait_for(lambda: len(seen) == 2, 5, "pod b turning ready")
            assert seen[-1] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
            await api.delete_namespaced_endpoint_slice("a", NAMESPACE)
            await wait_for(lambda: seen[-1] == ["http://10.0.0.2:8000"], 5, "slice a deleted")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert len(seen) == 3  # the other Service's slice and a not-ready pod reported nothing


async def test_watch_survives_an_unreachable_api_server_keeping_the_last_list():
    configuration = client.Configuration(host="http://127.0.0.1:9")  # nothing listens there
    async with client.ApiClient(configuration) as api_client:
        discovery = EndpointSliceDiscovery(
            SERVICE, NAMESPACE, api_client=api_client, retry_backoff_s=0.05, max_backoff_s=0.1
        )
        seen: list[list[str]] = []
        task = asyncio.create_task(discovery.watch(seen.append))
        await asyncio.sleep(0.5)
        assert not task.done()  # it keeps retrying instead of failing the trainer
        assert seen == []  # and reports nothing rather than an empty list
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_namespace_comes_from_the_pod(monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    assert EndpointSliceDiscovery(SERVICE).namespace == "team-a"
    monkeypatch.delenv("POD_NAMESPACE")
    monkeypatch.setattr(
        "services.trainer.k8s_discovery.NAMESPACE_FILE", __import__("pathlib").Path("/nonexistent")
    )
    with pytest.raises(RuntimeError, match="POD_NAMESPACE"):
        EndpointSliceDiscovery(SERVICE)


class Rollout:
    """Workers playing click-test episodes through the pool the trainer uses, with the
    rollout engine's rule: an infrastructure failure replays the episode, never scores it."""

    def __init__(self, pool: EnvPool, workers: int) -> None:
        self.pool = pool
        self.workers = workers
        self.rewards: list[float] = []
        self.opened: list[tuple[float, str]] = []  # (time asked for, endpoint) per session
        self.finished: Counter[str] = Counter()
        self.infra_retries = 0
        self.odd: list[tuple] = []
        self._stop = asyncio.Event()

    async def _episode(self, seed: int) -> None:
        for _attempt in range(5):
            try:
                options = BrowserResetOptions(task="click-test", seed=seed)
                asked = time.monotonic()  # the pool picks the pod after this instant
                async with self.pool.session(options) as session:
                    self.opened.append((asked, session.endpoint))
                    await asyncio.sleep(0.2)  # a policy thinking: episodes overlap the changes
                    observation = session.observation
                    for _turn in range(MAX_TURNS):  # a slow machine can time a click out:
                        for action in solve(observation):  # the policy then tries again
                            observation = await session.step(action)
                        if observation.done:
                            break
                    self.rewards.append(float(observation.reward or 0.0))
                    if observation.reward != 1.0:
                        fields = ("done", "reward", "error", "last_action_error", "elapsed_time")
                        facts = {k: getattr(observation, k, None) for k in fields}
                        self.odd.append((session.endpoint, seed, facts))
                    self.finished[session.endpoint] += 1
                    return
            except EnvInfraError:
                self.infra_retries += 1
        raise AssertionError(f"episode seed {seed} failed 5 times on infrastructure")

    async def _worker(self, index: int) -> None:
        seed = index * 1000
        while not self._stop.is_set():
            await self._episode(seed)
            seed += 1

    async def __aenter__(self) -> Rollout:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)  # re-raises a failed episode

    def opened_on(self, url: str, after: float = 0.0) -> int:
        return sum(1 for t, u in self.opened if u == url and t > after)


@pytest.mark.chromium
async def test_scaling_env_pods_live_while_a_rollout_runs(env_pods):
    """kubectl scale up: a new ready pod takes sessions within seconds. A pod turning not-ready
    and a pod scaled away are drained; the removed pod is then stopped mid-rollout. Every
    episode still ends with its real reward (1.0 for the scripted click-test policy)."""
    pod_a, pod_b, pod_c = env_pods.a, env_pods.b, env_pods.c
    async with kubernetes_api() as (api, configuration):
        for name, url in (("env-a", pod_a), ("env-b", pod_b)):
            await api.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice(name, url))
        pool = EnvPool(sessions_per_endpoint=2, failure_cooldown_s=0.5, wait_for_endpoint_s=60)
        async with client.ApiClient(configuration) as discovery_client:
            discovery = EndpointSliceDiscovery(SERVICE, NAMESPACE, api_client=discovery_client)
            pool.set_endpoints(await discovery.current())
            watcher = asyncio.create_task(discovery.watch(pool.set_endpoints))
            try:
                async with Rollout(pool, workers=3) as rollout:
                    await wait_for(lambda: len(rollout.rewards) >= 4, 60, "first episodes")

                    # Scale up: pod C is up and ready, its slice appears.
                    added = time.monotonic()
                    await api.create_namespaced_endpoint_slice(
                        NAMESPACE, endpoint_slice("env-c", pod_c)
                    )
                    took = await wait_for(
                        lambda: rollout.opened_on(pod_c) > 0, 20, "a session on the new pod"
                    )
                    print(f"new pod's first session {took:.2f} s after its slice appeared")
                    await wait_for(lambda: rollout.finished[pod_c] >= 2, 30, "episodes on C")

                    # Pod A reports not-ready (readiness probe): no new sessions there.
                    await api.patch_namespaced_endpoint_slice(
                        "env-a",
                        NAMESPACE,
                        {
                            "endpoints": [
                                {
                                    "addresses": ["127.0.0.1"],
                                    "conditions": endpoint_conditions(False),
                                }
                            ]
                        },
                    )
                    await wait_for(lambda: pod_a not in pool.endpoints, 5, "A drained")
                    drained_a = time.monotonic()

                    # Scale down: C's slice goes away, then its process gets SIGTERM (drain).
                    await api.delete_namespaced_endpoint_slice("env-c", NAMESPACE)
                    await wait_for(lambda: pod_c not in pool.endpoints, 5, "C drained")
                    drained_c = time.monotonic()
                    await asyncio.to_thread(env_pods.stop_c)

                    done = len(rollout.rewards)
                    await wait_for(lambda: len(rollout.rewards) >= done + 4, 60, "episodes on B")
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await pool.aclose()  # pods A and B are shared: give their session slots back
                await asyncio.to_thread(env_pods.stop_c)

    assert added > 0
    assert rollout.opened_on(pod_a, after=drained_a) == 0
    assert rollout.opened_on(pod_c, after=drained_c) == 0
    assert rollout.opened_on(pod_b, after=drained_c) >= 4
    assert rollout.rewards and all(r == 1.0 for r in rollout.rewards), rollout.odd


async def test_in_cluster_config_path_and_one_off_lists_leave_nothing_open(monkeypatch):
    """Without an api_client the in-cluster config is loaded (faked here: it points the default
    configuration at the emulator, as the service-account loader points it at the API server);
    a one-off current() closes its own HTTP session."""
    from kubernetes.aio import config as kube_config

    async with kubernetes_api() as (api, configuration):
        await api.create_namespaced_endpoint_slice(
            NAMESPACE, endpoint_slice("a", "http://10.0.0.1:8000")
        )

        def load_incluster_config(client_configuration=None, try_refresh_token=True):
            client.Configuration.set_default(configuration)

        monkeypatch.setattr(kube_config, "load_incluster_config", load_incluster_config)
        discovery = EndpointSliceDiscovery(SERVICE, NAMESPACE)
        assert await discovery.current() == ["http://10.0.0.1:8000"]
        assert discovery._api_client is None  # closed after the one-off LIST
        assert await discovery.current() == ["http://10.0.0.1:8000"]  # and reopened on demand


async def test_a_refused_list_names_the_service_and_the_missing_permission():
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
        emulator["get", path] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden"}
        configuration = client.Configuration(host=str(server.url).rstrip("/"))
        async with client.ApiClient(configuration) as api_client:
            discovery = EndpointSliceDiscovery(SERVICE, NAMESPACE, api_client=api_client)
            with pytest.raises(RuntimeError, match=r"train/rl-browser-rl-env: HTTP 403 \(RBAC"):
                await discovery.current()
