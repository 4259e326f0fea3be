"""Two real vLLM CPU replicas serving one policy (``make test-vllm``): the trainer's generation
backend spreads episodes over both, a policy update lands on both, a replica killed mid-rollout
loses no generation, and a restarted replica is brought up to the current version before it
serves (the rules in services/trainer/replicas.py, fast-tested in tests/trainer/test_replicas.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from types import SimpleNamespace

import psutil
import pytest

from services.trainer.config import PolicySyncConfig
from services.trainer.generation.base import SamplingParams
from services.trainer.generation.remote import RemoteBackend
from services.trainer.policy_sync import build_callback
from services.trainer.replicas import ReplicaSet
from tests.inference.conftest import serve

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
LONG = SamplingParams(max_new_tokens=48, temperature=1.0, seed=0)


@pytest.fixture(scope="module")
def peft_model(tiny_lfm2):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lfm2, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, lora)


def _state(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_world_process_zero=True)


def _kill(url: str) -> None:
    """SIGKILL the server process group listening on ``url``'s port (a crashed pod)."""
    port = int(url.rsplit(":", 1)[1])
    (pid,) = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.pid}
    os.killpg(os.getpgid(pid), signal.SIGKILL)


async def _episodes(backend: RemoteBackend, count: int, turn: int, name: str = "episode"):
    prompts = [[1, 20 + k, 30 + turn, 40] for k in range(count)]
    return await backend.generate(prompts, LONG, episodes=[f"{name}-{k}" for k in range(count)])


def test_two_replicas_one_policy_through_a_crash_and_a_restart(tiny_lfm2, peft_model, tmp_path):
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(serve(tiny_lfm2, tmp_path / f"replica-{k}")) for k in (0, 1)]
        replicas = ReplicaSet(urls, probe_after_s=60)
        config = PolicySyncConfig(enabled=True, servers={"endpoints": urls}, wait_ready_s=300)
        sync = build_callback(config, replicas=replicas)
        sync.on_train_begin(args=None, state=_state(0), control=None, model=peft_model)

        # An update lands on both replicas; generation is spread and reports that version.
        sync.on_step_end(args=None, state=_state(1), control=None, model=peft_model)
        assert sorted(sync.last_result.accepted) == sorted(urls)
        assert [sync.pusher.client(u).status().version for u in urls] == [1, 1]

        async def crash_mid_rollout():
            backend = RemoteBackend(replicas, model="policy", timeout_s=120)
            try:
                first = await _episodes(backend, 8, 0)
                requests = {r.url: r.requests for r in replicas.all()}
                second = asyncio.ensure_future(_episodes(backend, 8, 1))
                await asyncio.sleep(0)  # the second turn's requests are out to both replicas
                _kill(urls[1])  # before any answer can come back (the loop is not running)
                return first, requests, await second
            finally:
                await backend.close()

        first, requests, second = asyncio.run(crash_mid_rollout())
        assert requests == {urls[0]: 4, urls[1]: 4}
        assert {g.policy_version for g in first} == {1}
        assert len(second) == 8 and all(g.token_ids for g in second)  # no generation lost
        assert replicas.retries == 4  # every request the dead replica had, moved and counted
        assert not next(r for r in replicas.all() if r.url == urls[1]).up

        # The replica comes back (a new pod on the same address) serving the base model: the
        # trainer brings it to version 1 before the next step, and then it serves again.
        port = int(urls[1].rsplit(":", 1)[1])
        stack.enter_context(serve(tiny_lfm2, tmp_path / "replica-1-again", port=port))
        assert sync.pusher.client(urls[1]).status().version == 0
        sync.on_step_begin(args=None, state=_state(1), control=None)
        assert sync.pusher.client(urls[1]).status().version == 1
        before = {r.url: r.requests for r in replicas.all()}

        async def after_restart():
            backend = RemoteBackend(replicas, model="policy", timeout_s=120)
            try:
                return await _episodes(backend, 8, 0, name="new-episode")
            finally:
                await backend.close()

        third = asyncio.run(after_restart())
        assert {g.policy_version for g in third} == {1}
        served = {r.url: r.requests - before[r.url] for r in replicas.all()}
        assert served[urls[1]] > 0 and sum(served.values()) == 8  # it takes its share again
