"""Session hygiene of a pod: idle reaping, browser recycling, allow-list, SIGTERM draining."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from services.env.client import BrowserEnvClient, EnvRequestError, EnvUnavailableError
from services.env.families.miniwob import oracle
from services.env.local import free_port, start_local_env_pods, stop_pod

pytestmark = pytest.mark.chromium


@pytest.fixture(scope="module")
def pod():
    with start_local_env_pods(
        1,
        max_sessions=2,
        browsers=1,
        idle_ttl_s=1.5,
        episodes_per_browser=2,
        allowed_tasks=["click-test", "miniwob.login-user"],
    ) as urls:
        yield urls[0]


async def test_idle_sessions_are_reaped(pod, metric):
    async with BrowserEnvClient(pod) as env:
        await env.reset(task="click-test", seed=1)
        assert httpx.get(f"{pod}/ready").json()["sessions_active"] == 1
        await asyncio.sleep(3.5)
        assert httpx.get(f"{pod}/ready").json()["sessions_active"] == 0
        with pytest.raises(EnvUnavailableError, match=r"idle for more than 1\.5 s"):
            await env.step("click('13')")
    assert metric(pod, "browserenv_errors_total", kind="idle_timeout") >= 1
    assert metric(pod, "browserenv_episodes_total", task="click-test", outcome="abandoned") >= 1


async def test_browser_is_recycled_after_n_episodes_and_episodes_still_work(pod, metric):
    restarts = metric(pod, "browserenv_browser_restarts_total")
    async with BrowserEnvClient(pod) as env:
        for seed in range(5):
            obs = await env.reset(task="click-test", seed=seed)
            obs = await env.step(oracle.solve(obs)[0])
            assert obs.reward == 1.0
    assert metric(pod, "browserenv_browser_restarts_total") >= restarts + 2


async def test_two_sessions_share_one_browser_thread(pod):
    async def run(task: str) -> float:
        async with BrowserEnvClient(pod) as env:
            obs = await env.reset(task=task, seed=2)
            for action in oracle.solve(obs):
                obs = await env.step(action)
            return obs.reward

    assert await asyncio.gather(run("click-test"), run("login-user")) == [1.0, 1.0]


async def test_allow_list_limits_tasks_and_names_the_valid_ones(pod):
    async with BrowserEnvClient(pod) as env:
        with pytest.raises(EnvRequestError) as caught:
            await env.reset(task="enter-text")
        assert caught.value.code == "UNKNOWN_TASK"
        assert caught.value.message == (
            "task 'enter-text' is not allowed on this pod; valid tasks: click-test, login-user"
        )
        obs = await env.reset()  # the pod's default task
        assert obs.task == "click-test"


async def test_sigterm_drains_running_episodes_then_exits_cleanly():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.env", "--port", str(port), "--max-sessions", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
        async with BrowserEnvClient(url) as env:
            obs = await env.reset(task="login-user", seed=1)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            ready = httpx.get(f"{url}/ready")
            assert (ready.status_code, ready.json()["reason"]) == (503, "draining")
            async with connect(url.replace("http", "ws") + "/ws") as late:
                reply = json.loads(await late.recv())
                assert reply["data"]["code"] == "DRAINING"
            for action in oracle.solve(obs):  # the running episode may finish
                obs = await env.step(action)
            assert obs.reward == 1.0
        assert proc.wait(30) == 0
    finally:
        stop_pod(proc)
