"""One policy on N inference replicas: routing, a dying replica, updates to every replica, and a
replica that restarts or refuses (the rules in services/trainer/replicas.py).

The replicas are our real inference routes and version middleware on loopback HTTP servers, with
vLLM's engine replaced by the recording double and its completions by an echo (vLLM is not
importable here; tests/inference runs two real vLLM CPU replicas under ``make test-vllm``).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.trainer.config import PolicySyncConfig
from services.trainer.generation.base import SamplingParams
from services.trainer.generation.remote import RemoteBackend
from services.trainer.metrics import TrainerMetrics
from services.trainer.policy_sync import PolicySyncError, build_callback
from services.trainer.replicas import ReplicaSet
from tests.inference.fakes import free_port, serve_policy_service
from tests.trainer.conftest import remote_lora_config, train

GREEDY = SamplingParams(max_new_tokens=4, temperature=0.0)


# --- the rules, on the state alone ------------------------------------------------------------


def test_least_busy_replica_and_an_episode_stays_on_its_replica():
    replicas = ReplicaSet(["http://a", "http://b"])
    first = replicas.choose("episode-1")
    second = replicas.choose("episode-2")
    assert {first.url, second.url} == {"http://a", "http://b"}  # spread while both are free
    again = replicas.choose("episode-1")  # its replica is busier now, yet the episode stays
    assert again.url == first.url
    replicas.release(first.url)
    replicas.release(first.url)
    assert replicas.choose(None).url == first.url  # the least busy one again


def test_only_replicas_at_the_pushed_version_get_traffic():
    replicas = ReplicaSet(["http://a", "http://b"])
    replicas.pushed(2)
    replicas.served("http://a", 2)
    replicas.served("http://b", 1)
    assert {replicas.choose(f"e{k}").url for k in range(6)} == {"http://a"}
    assert replicas.behind() == ["http://b"]
    replicas.served("http://b", 2)
    assert replicas.behind() == [] and replicas.choose("new").url == "http://b"


def test_answers_within_max_staleness_of_the_push_count_and_older_ones_mark_a_restart():
    replicas = ReplicaSet(["http://a", "http://b"], max_lag=1)
    for url in ("http://a", "http://b"):
        replicas.served(url, 5)
    replicas.pushed(5)
    assert replicas.answered("http://a", 5)
    replicas.pushed(6)
    replicas.served("http://a", 6)
    # Started before the push, answered after it: one version behind is within the bound, and
    # it does not make "a" look behind (it already serves 6).
    assert replicas.answered("http://a", 5)
    assert replicas.choose(None).url == "http://a"
    # Two versions behind: a restarted replica's answer; not used, and "b" is behind now.
    assert not replicas.answered("http://b", 4)
    assert replicas.behind() == ["http://b"]
    synchronous = ReplicaSet(["http://a"])
    synchronous.pushed(6)
    assert not synchronous.answered("http://a", 5)


def test_a_failed_replica_is_skipped_then_probed_after_its_back_off():
    replicas = ReplicaSet(["http://a", "http://b"], probe_after_s=0.0)
    replicas.failed("http://a", "connection refused")
    assert {replicas.choose(f"e{k}").url for k in range(4)} == {"http://b"}
    assert replicas.due_for_probe() == ["http://a"]
    replicas.set_urls(["http://b"])  # discovery no longer lists it: forgotten
    assert [r.url for r in replicas.all()] == ["http://b"]


# --- real HTTP replicas ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from services.trainer.models import build_random_model

    return build_random_model("lfm2", tmp_path_factory.mktemp("base"), size="tiny")


@pytest.fixture(scope="module")
def peft_model(base_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"]))


@pytest.fixture
def two_replicas(base_model, tmp_path):
    services = [serve_policy_service(free_port(), base_model, tmp_path) for _ in range(2)]
    yield services
    for service in services:
        service.stop()


def _sync(replicas: ReplicaSet, **fields):
    config = PolicySyncConfig(enabled=True, wait_ready_s=5, **fields)
    return build_callback(config, replicas=replicas)


def _state(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_world_process_zero=True)


async def _turns(backend: RemoteBackend, episodes: list[str], turn: int):
    prompts = [[10 * k + turn, 1, 2] for k in range(len(episodes))]
    return await backend.generate(prompts, GREEDY, episodes=episodes)


def _play(replicas: ReplicaSet, *episode_names: str, turns: int = 1, between=None, **backend):
    """Generate ``turns`` turns of 4 episodes per name, on a fresh backend; ``between`` runs
    after the first turn (a replica dies). All generations, in order."""
    client = RemoteBackend(replicas, model="policy", **backend)

    async def play():
        out = []
        try:
            for turn in range(turns):
                if turn == 1 and between is not None:
                    between()
                for name in episode_names:
                    out += await _turns(client, [f"{name}{k}" for k in range(4)], turn)
            return out
        finally:
            await client.close()

    return asyncio.run(play())


def _pushed_version_1(replicas: ReplicaSet, peft_model, **fields):
    """A policy sync over ``replicas`` that has pushed version 1 to them."""
    sync = _sync(replicas, **fields)
    sync.on_train_begin(args=None, state=_state(0), control=None, model=peft_model)
    sync.on_step_end(args=None, state=_state(1), control=None, model=peft_model)
    return sync


def _restart(services, index: int, base_model, folder) -> None:
    """A new server on the same address, serving the base model (version 0)."""
    port = int(services[index].url.rsplit(":", 1)[1])
    services[index].stop()
    services[index] = serve_policy_service(port, base_model, folder)


def test_generation_is_spread_and_each_episode_keeps_its_replica(two_replicas):
    _play(ReplicaSet([s.url for s in two_replicas]), "a", "b", turns=3)
    served = [{r["prompt"][0] % 10 for r in s.completions} for s in two_replicas]
    per_replica = [len(s.completions) for s in two_replicas]
    assert per_replica == [12, 12]  # 8 episodes x 3 turns, half on each
    by_episode = [{r["prompt"][0] // 10 for r in s.completions} for s in two_replicas]
    assert not by_episode[0] & by_episode[1]  # no episode's turns on both replicas
    assert served == [{0, 1, 2}, {0, 1, 2}]


def test_an_update_lands_on_every_replica_and_generation_reports_it(two_replicas, peft_model):
    replicas = ReplicaSet([s.url for s in two_replicas])
    sync = _pushed_version_1(replicas, peft_model)
    assert [s.manager.status().version for s in two_replicas] == [1, 1]
    assert sorted(sync.last_result.accepted) == sorted(s.url for s in two_replicas)
    assert {g.policy_version for g in _play(replicas, "e")} == {1}
    assert all(s.completions for s in two_replicas)


def test_an_episode_keeps_the_version_it_started_on_until_that_version_is_retired(
    two_replicas, peft_model
):
    """Rollouts ahead of the update (max_staleness 2): a push mid-episode does not switch the
    episode's adapter; once its version is retired (keep_adapter_versions 2), it goes on with
    the newest."""
    service = two_replicas[0]
    replicas = ReplicaSet([service.url], max_lag=2)
    sync = _pushed_version_1(replicas, peft_model)
    client = RemoteBackend(replicas, model="policy", pin_episodes=True)

    def push(version: int) -> None:
        sync.on_step_end(args=None, state=_state(version), control=None, model=peft_model)

    async def play() -> list[list[int]]:
        try:
            first = await _turns(client, ["e"], 0)
            push(2)
            second = await _turns(client, ["e", "f"], 1)
            push(3)  # version 1 is retired now (the newest two stay)
            third = await _turns(client, ["e", "f"], 2)
        finally:
            await client.close()
        return [[g.policy_version for g in turn] for turn in (first, second, third)]

    assert asyncio.run(play()) == [[1], [1, 2], [3, 2]]
    # e's last turn asked for policy-v1 first (vLLM: 404), then for the served name.
    assert sorted(r["model"] for r in service.completions[-3:]) == [
        "policy-v1", "policy-v2", "policy-v3"
    ]  # fmt: skip


def test_a_replica_that_dies_mid_rollout_loses_no_request(two_replicas):
    replicas = ReplicaSet([s.url for s in two_replicas], probe_after_s=60)
    metrics = TrainerMetrics()
    metrics.watch_replicas(replicas)
    # Two batches of 4 episodes, two turns; one replica dies after the first turn with its
    # episodes (a2, a3, b2, b3 or the like) half played.
    played = _play(replicas, "a", "b", turns=2, between=two_replicas[1].stop, timeout_s=5)
    second_turn = played[8:]
    assert len(second_turn) == 8 and all(g.token_ids for g in second_turn)
    # The first batch's two requests to it failed and were retried (counted); after that it is
    # down, and the second batch's episodes go straight to the live replica.
    assert replicas.retries == 2
    assert {r.url for r in replicas.all() if r.in_flight == 0} == {s.url for s in two_replicas}
    dead = next(r for r in replicas.all() if r.url == two_replicas[1].url)
    assert not dead.up and dead.failures >= 1
    assert metrics.registry.get_sample_value("trainer_inference_retries_total") == 2
    up = metrics.registry.get_sample_value(
        "trainer_inference_replica_up", {"replica": two_replicas[1].url}
    )
    assert up == 0.0


def test_a_restarted_replica_is_brought_up_to_date_before_it_serves(
    two_replicas, peft_model, base_model, tmp_path
):
    replicas = ReplicaSet([s.url for s in two_replicas])
    sync = _pushed_version_1(replicas, peft_model)
    _restart(two_replicas, 1, base_model, tmp_path / "restarted")
    assert two_replicas[1].manager.status().version == 0  # a new pod serves the base model
    sync.on_step_begin(args=None, state=_state(1), control=None)  # before the next rollout
    assert two_replicas[1].manager.status().version == 1
    assert {g.policy_version for g in _play(replicas, "e")} == {1}
    assert two_replicas[1].completions  # and it takes its share again


def test_a_replica_that_refuses_an_update_gets_no_traffic_until_it_catches_up(
    two_replicas, peft_model
):
    replicas = ReplicaSet([s.url for s in two_replicas])
    sync = _sync(replicas)
    sync.on_train_begin(args=None, state=_state(0), control=None, model=peft_model)
    two_replicas[1].engine.refuse = "adapter broken"
    sync.on_step_end(args=None, state=_state(1), control=None, model=peft_model)
    assert sync.pushed_version == 1 and sync.refusals == 0  # one replica took it: done
    assert [s.manager.status().version for s in two_replicas] == [1, 0]
    assert replicas.behind() == [two_replicas[1].url]
    assert {g.policy_version for g in _play(replicas, "e", "f")} == {1}
    assert not two_replicas[1].completions  # the stale replica generated nothing
    two_replicas[1].engine.refuse = None
    sync.on_step_begin(args=None, state=_state(1), control=None)
    assert two_replicas[1].manager.status().version == 1 and replicas.behind() == []


def test_an_update_every_replica_refuses_counts_as_a_refusal(two_replicas, peft_model):
    replicas = ReplicaSet([s.url for s in two_replicas])
    sync = _sync(replicas, max_consecutive_refusals=1)
    sync.on_train_begin(args=None, state=_state(0), control=None, model=peft_model)
    for service in two_replicas:
        service.engine.refuse = "adapter broken"
    with pytest.raises(PolicySyncError, match="adapter broken") as error:
        sync.on_step_end(args=None, state=_state(1), control=None, model=peft_model)
    assert error.value.refused and all(s.url in str(error.value) for s in two_replicas)


def test_kubernetes_servers_are_watched_in_the_background_until_closed(monkeypatch):
    """``servers: {type: kubernetes}``: the replica set follows the Service's ready pods (the
    EndpointSlice watch itself is tested in tests/deploy/test_k8s_discovery.py)."""
    import threading
    import time

    from services.trainer import discovery
    from services.trainer.config import KubernetesDiscoveryConfig
    from services.trainer.replicas import replica_set

    class Scaled:
        async def current(self):
            return ["http://replica-0"]

        async def watch(self, on_change):
            on_change(["http://replica-0", "http://replica-1"])  # scaled up
            await asyncio.Event().wait()

    monkeypatch.setattr(discovery, "build_discovery", lambda config: Scaled())
    replicas = replica_set(KubernetesDiscoveryConfig(service="rl-browser-rl-inference"))
    deadline = time.monotonic() + 10
    while len(replicas.all()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.url for r in replicas.all()] == ["http://replica-0", "http://replica-1"]
    replicas.close()
    deadline = time.monotonic() + 10
    while any(t.name == "replica-discovery" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the discovery thread did not stop"
        time.sleep(0.01)


def test_a_replica_restarted_mid_rollout_is_updated_before_its_answers_count(
    two_replicas, peft_model, base_model, tmp_path
):
    """Restarted on the same address between two requests, the replica answers with the base
    model (version 0): that answer is not used, the replica gets the pushed version at once, and
    takes its share again within the same rollout."""
    replicas = ReplicaSet([s.url for s in two_replicas], probe_after_s=0.0)
    _pushed_version_1(replicas, peft_model)
    _restart(two_replicas, 1, base_model, tmp_path / "restarted")
    generations = _play(replicas, "e", "f")
    assert {g.policy_version for g in generations} == {1}  # no base-model answer was used
    assert replicas.retries >= 1
    assert two_replicas[1].manager.status().version == 1  # updated by generation's probe
    models = [body["model"] for body in two_replicas[1].completions]  # as the middleware routed
    assert models[0] == "policy" and models[-1].startswith("policy-v1")  # base first, then v1


@pytest.mark.chromium
def test_training_on_two_replicas_loses_no_episode_and_no_step_when_one_dies(
    env_pods, tiny_chat_model, tmp_path
):
    """GRPO with LoRA over real env pods, generating on two replicas and pushing each adapter to
    both; after step 1 one replica dies. Steps 2 and 3 play all their episodes on the other."""
    import json

    from transformers import TrainerCallback

    services = [serve_policy_service(free_port(), tiny_chat_model, tmp_path) for _ in range(2)]
    cfg = remote_lora_config(tiny_chat_model, tmp_path / "run", [s.url for s in services])

    class KillAfterStep1(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                services[1].stop()

    try:
        training, final = train(
            cfg, tiny_chat_model, env_pods, callbacks=lambda _: [KillAfterStep1()]
        )
    finally:
        for service in services:
            service.stop()
    assert training.trainer.state.global_step == 3 and final is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").open()]
    assert [r["step"] for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    assert all(r["outcome"] != "dropped" for r in records)
    # Every step's episodes ran on the version pushed after the step before it.
    versions = {s: {v for r in records if r["step"] == s for v in r["policy_versions"]}
                for s in (1, 2, 3)}  # fmt: skip
    assert versions == {1: {0}, 2: {1}, 3: {2}}
    assert services[0].manager.status().version == 3
    assert services[1].completions and len(services[0].completions) > len(services[1].completions)
