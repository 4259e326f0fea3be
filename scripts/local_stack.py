"""`make up`: the cluster's shape as local processes on loopback, watched by a real Prometheus.

Starts N env pods (`services.env.local`), the trainer (`python -m services.trainer train`) with
its config pointed at those pods, and Debian's `prometheus` scraping all of them every few
seconds with the chart's alert rules loaded (rendered by the real Helm engine). Scraped series
carry the labels the Prometheus Operator would add on a cluster (`namespace`, `pod`,
`container`), so the chart's dashboard and alerts work unchanged against it (namespace `local`).
Ctrl-C (or the trainer finishing, unless --keep) stops everything.

  make up                                  # trainer config: services/trainer/configs/local_cpu.yaml
  make up config=path/to/trainer.yaml
  .venv/bin/python scripts/local_stack.py --no-trainer --env-pods 2   # env pods + Prometheus only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from services.env.local import free_port, start_local_env_pods, stop_pod
from services.trainer.config import dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "browser-rl"
NAMESPACE = "local"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def alert_rules(namespace: str = NAMESPACE) -> str:
    """The chart's PrometheusRule groups, rendered for `namespace` (a Prometheus rules file)."""
    import helm_python as helm

    values = {"monitoring": {"prometheusRule": {"enabled": True}}}  # no Operator to detect here
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="rl", namespace=namespace)
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "PrometheusRule":
                return yaml.safe_dump(doc["spec"], sort_keys=False)
    raise RuntimeError("the chart rendered no PrometheusRule")


def scrape_config(
    targets: dict[str, list[str]], interval_s: float, rule_file: Path | None
) -> dict[str, Any]:
    """One job per component; each target gets the labels a PodMonitor would give it."""
    jobs = []
    for component, urls in targets.items():
        static = [
            {
                "targets": [url.removeprefix("http://").rstrip("/")],
                "labels": {
                    "namespace": NAMESPACE,
                    "container": component,
                    "pod": f"{component}-{index}",
                },
            }
            for index, url in enumerate(urls)
        ]
        jobs.append({"job_name": f"{NAMESPACE}/{component}", "static_configs": static})
    every = f"{round(interval_s * 1000)}ms"  # Prometheus durations take no decimals
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": every,
            "evaluation_interval": every,
            "scrape_timeout": f"{round(min(interval_s, 10) * 1000)}ms",
        },
        "scrape_configs": jobs,
    }
    if rule_file is not None:
        config["rule_files"] = [str(rule_file)]
    return config


@contextlib.contextmanager
def run_prometheus(
    targets: dict[str, list[str]],
    *,
    port: int = 0,
    interval_s: float = 2.0,
    with_rules: bool = True,
    work_dir: Path | None = None,
) -> Iterator[str]:
    """A real Prometheus server on 127.0.0.1 scraping `targets`; yields its base URL."""
    if not Path(PROMETHEUS).exists():
        raise FileNotFoundError(f"{PROMETHEUS} missing: run `make setup` (Debian's prometheus)")
    with contextlib.ExitStack() as stack:
        work = work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prom-")))
        rules = None
        if with_rules:
            rules = work / "alerts.yaml"
            rules.write_text(alert_rules())
        config = work / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(targets, interval_s, rules)))
        port = port or free_port()
        log = stack.enter_context(open(work / "prometheus.log", "ab"))
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_ready(f"{url}/-/ready", proc, timeout_s=60)
            except (RuntimeError, TimeoutError) as exc:
                tail = (work / "prometheus.log").read_text()[-2000:]
                raise RuntimeError(f"{exc}; prometheus.log:\n{tail}") from None
            yield url
        finally:
            stop_pod(proc)


def wait_until_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} was up")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """Instant query; the result vector (empty while the series has not arrived)."""
    reply = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    reply.raise_for_status()
    return reply.json()["data"]["result"]


def trainer_config(source: Path, env_urls: list[str], metrics_port: int, out: Path) -> Path:
    """The trainer config pointed at the already-running env pods and a known metrics port."""
    config = dump_config(load_config(source))
    config["env"]["discovery"] = {"type": "static", "endpoints": env_urls}
    config["env"]["local"]["pods"] = 0
    config["metrics"].update({"port": metrics_port, "host": "127.0.0.1"})
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def env_pods_wanted(config_path: Path | None, default: int) -> tuple[int, int, dict]:
    """(pods, max sessions per pod, pod settings) from the trainer config's env.local section."""
    if config_path is None:
        return default, 4, {}
    config = load_config(config_path)
    pod = config.local_pod_config().model_dump(exclude={"host", "port", "max_sessions"})
    return config.env.local.pods or default, config.env.local.max_sessions, pod


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="trainer config YAML")
    parser.add_argument("--no-trainer", action="store_true", help="env pods + Prometheus only")
    parser.add_argument("--env-pods", type=int, default=2, help="when the config names none")
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--scrape-interval", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep running after the trainer ends")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "runs" / "local-stack")
    args = parser.parse_args(argv)
    stop_on_signals()

    config = None if args.no_trainer else args.config
    if config is not None and not config.is_file():
        parser.error(f"trainer config {config} does not exist")
    pods, sessions, pod_settings = env_pods_wanted(config, args.env_pods)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        print(f">> starting {pods} env pods (logs in {args.log_dir})", flush=True)
        urls = stack.enter_context(
            start_local_env_pods(pods, max_sessions=sessions, log_dir=args.log_dir, **pod_settings)
        )
        targets = {"env": urls}
        if config is not None:
            metrics_port = free_port()
            targets["trainer"] = [f"http://127.0.0.1:{metrics_port}"]
        # Prometheus first: it must see the run from its first step.
        prometheus = stack.enter_context(
            run_prometheus(
                targets,
                port=args.prometheus_port,
                interval_s=args.scrape_interval,
                work_dir=args.log_dir,
            )
        )
        trainer = None
        if config is not None:
            derived = trainer_config(config, urls, metrics_port, args.log_dir / "trainer.yaml")
            log = stack.enter_context(open(args.log_dir / "trainer.log", "ab"))
            print(f">> trainer: python -m services.trainer train --config {derived}", flush=True)
            trainer = subprocess.Popen(
                [sys.executable, "-m", "services.trainer", "train", "--config", str(derived)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            stack.callback(stop_pod, trainer, 60.0)
        print(f">> env pods:   {' '.join(urls)}")
        print(
            f'>> Prometheus: {prometheus}  (namespace="{NAMESPACE}"; alerts at {prometheus}/alerts)'
        )
        print(">> Grafana: import helm/browser-rl/files/dashboards/browser-rl.json")
        print(">> Ctrl-C stops everything", flush=True)
        try:
            while trainer is None or trainer.poll() is None or args.keep:
                time.sleep(1)
        except KeyboardInterrupt:
            print("\n>> stopping", flush=True)
            return 0
        print(f">> trainer exited with {trainer.returncode}", flush=True)
        return trainer.returncode or 0


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop the stack cleanly. Python keeps SIGINT ignored when the
    process started with it ignored (any `cmd &` from a script), so set both explicitly."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
