"""`make bench-discovery`: how fast the trainer learns about env pods coming and going.

Against an HTTP Kubernetes API (kmock's emulator on loopback, the real `kubernetes` client), it
times, for each event, from sending an EndpointSlice change to the API (a ready pod added, a
pod turning not-ready) until `EndpointSliceDiscovery` reported the new endpoint list, the same
callback that feeds `EnvPool.set_endpoints`. Baseline, in the same run: polling LIST every
`--poll-s` seconds (what a discovery without WATCH would do). Prints a table (medians, p95) and
writes runs/bench/discovery.json. Only the control plane is measured: a real API server adds its
own latency (etcd write, watch fan-out: typically milliseconds) and the kubelet's readiness probe
period (2 s in the chart) comes before the slice changes at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import kmock
from kubernetes.aio import client

from services.trainer.k8s_discovery import EndpointSliceDiscovery

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE, SERVICE = "bench", "env"


def endpoint_slice(index: int, ready: bool) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"env-{index}",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": SERVICE},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": [{"addresses": [f"10.0.0.{index}"], "conditions": {"ready": ready}}],
    }


def url(index: int) -> str:
    return f"http://10.0.0.{index}:8000"


async def poll(discovery: EndpointSliceDiscovery, on_change: Callable, every_s: float) -> None:
    """The baseline: LIST every `every_s` seconds, report when the list changed."""
    last = None
    while True:
        endpoints = await discovery.current()
        if endpoints != last:
            last = endpoints
            on_change(endpoints)
        await asyncio.sleep(every_s)


async def measure(mode: str, events: int, poll_s: float) -> list[float]:
    """Seconds from each API change request to the discovery callback showing it."""
    latencies: list[float] = []
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["discovery.k8s.io/v1/endpointslices"].kind = "EndpointSlice"
        configuration = client.Configuration(host=str(server.url).rstrip("/"))
        async with (
            client.ApiClient(configuration) as api_client,
            client.ApiClient(configuration) as discovery_client,
        ):
            api = client.DiscoveryV1Api(api_client)
            discovery = EndpointSliceDiscovery(SERVICE, NAMESPACE, api_client=discovery_client)
            seen: list[tuple[float, list[str]]] = []
            changed = asyncio.Event()

            def on_change(endpoints: list[str]) -> None:
                seen.append((time.monotonic(), endpoints))
                changed.set()

            runner = (
                discovery.watch(on_change)
                if mode == "watch"
                else poll(discovery, on_change, poll_s)
            )
            task = asyncio.create_task(runner)
            await asyncio.sleep(0.3)  # the initial LIST (empty)

            rng = random.Random(0)

            async def timed(change, holds: Callable[[list[str]], bool]) -> None:
                if mode == "poll":  # changes land at a random phase of the polling period
                    await asyncio.sleep(rng.uniform(0, poll_s))
                accepted = time.monotonic()  # the request is sent now (its round trip counts)
                await change
                while True:
                    changed.clear()
                    hit = next((t for t, e in seen if t >= accepted and holds(e)), None)
                    if hit is not None:
                        latencies.append(hit - accepted)
                        return
                    await asyncio.wait_for(changed.wait(), poll_s * 3 + 5)

            for i in range(1, events // 2 + 1):
                await timed(
                    api.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice(i, True)),
                    lambda e, i=i: url(i) in e,
                )
                await timed(
                    api.patch_namespaced_endpoint_slice(
                        f"env-{i}", NAMESPACE, {"endpoints": endpoint_slice(i, False)["endpoints"]}
                    ),
                    lambda e, i=i: url(i) not in e,
                )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return latencies


def summary(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {
        "events": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[max(0, round(0.95 * len(ordered)) - 1)] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40, help="API changes per mode (even)")
    parser.add_argument("--poll-s", type=float, default=2.0, help="baseline LIST period")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "discovery.json")
    args = parser.parse_args(argv)

    baseline_events = max(6, args.events // 4)  # polling is slow; fewer events give its median
    results = {
        "watch": summary(asyncio.run(measure("watch", args.events, args.poll_s))),
        f"poll {args.poll_s:g}s": summary(
            asyncio.run(measure("poll", baseline_events, args.poll_s))
        ),
    }
    watch, baseline = results["watch"], results[f"poll {args.poll_s:g}s"]
    print(f"{'discovery':<12}{'events':>8}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for mode, row in results.items():
        print(
            f"{mode:<12}{row['events']:>8}{row['p50_ms']:>10}{row['p95_ms']:>10}{row['max_ms']:>10}"
        )
    ratio = baseline["p50_ms"] / max(watch["p50_ms"], 0.1)
    print(f"watch reports a change {ratio:.0f}x sooner than LIST polling (medians)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "p50_ratio": ratio}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
