"""Env pods as local processes (the cluster shape without a cluster): for ``make run`` and tests.

with start_local_env_pods(2, max_sessions=4) as urls:
    ...  # urls == ["http://127.0.0.1:41234", "http://127.0.0.1:41235"]
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from services.env.config import EnvServerConfig

_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM the pod when the process that started it dies.

    Without it, a trainer or test killed with SIGKILL leaves orphaned pods holding Chromium.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"env pod {url} exited with {proc.returncode} before it was ready")
        try:
            reply = httpx.get(f"{url}/ready", timeout=2.0)
            if reply.status_code == 200:
                return
            last = reply.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"env pod {url} not ready after {timeout_s} s: {last}")


def stop_pod(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """SIGTERM (graceful drain), then SIGKILL after ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def start_local_env_pods(
    n: int,
    *,
    max_sessions: int,
    ready_timeout_s: float = 180.0,
    log_dir: str | Path | None = None,
    **config: Any,
) -> Iterator[list[str]]:
    """Start ``n`` env server processes on free loopback ports; yield their base URLs.

    ``config`` holds further ``EnvServerConfig`` fields (validated here, before anything
    starts). Pod output goes to ``log_dir/env-<i>.log`` (default: a temporary directory).
    """
    EnvServerConfig(max_sessions=max_sessions, **config)  # fail fast on a bad field
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="env-pods-")))
        logs = Path(log_dir) if log_dir else work
        logs.mkdir(parents=True, exist_ok=True)
        urls = []
        try:
            for index in range(n):
                port = free_port()
                path = work / f"env-{index}.yaml"
                fields = {**config, "max_sessions": max_sessions, "host": "127.0.0.1"}
                path.write_text(yaml.safe_dump({**fields, "port": port}))
                log_file = stack.enter_context(open(logs / f"env-{index}.log", "ab"))
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "services.env", "--config", str(path)],
                        cwd=_ROOT,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
            for url, proc in zip(urls, procs, strict=True):
                _wait_ready(url, proc, ready_timeout_s)
            yield urls
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                stop_pod(proc)
