"""Local env pods never outlive the process that started them."""

import signal
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.chromium

_STARTER = """
import os, signal
from services.env.local import start_local_env_pods
with start_local_env_pods(1, max_sessions=1) as urls:
    print(urls[0], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup code runs: only the kernel can stop the pod
"""


def test_pod_stops_when_its_parent_is_killed():
    starter = subprocess.Popen([sys.executable, "-c", _STARTER], stdout=subprocess.PIPE, text=True)
    url = starter.stdout.readline().strip()
    assert starter.wait(timeout=240) == -signal.SIGKILL
    assert url.startswith("http://127.0.0.1:"), "the starter never printed a ready pod"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=2)
        except httpx.HTTPError:
            return  # the pod drained and exited with its parent
        time.sleep(0.5)
    pytest.fail(f"env pod {url} still answers 60 s after its parent died")
