"""The update protocol and version pinning, on our routes + middleware with an engine double.

vLLM itself is not importable in the main virtualenv; the same routes run against the real engine
in test_vllm_service.py (``make test-vllm``). Here the double records what vLLM would be asked.
"""

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from services.inference import metrics
from services.inference.policy import PolicyManager
from services.inference.routes import PolicyVersionMiddleware, router
from tests.inference.fakes import BASE_SHAPES, RecordingEngine, write_adapter, write_checkpoint


def build(tmp_path: Path, *, pause_mode: str = "wait"):
    engine = RecordingEngine()
    manager = PolicyManager(
        engine,
        base_model="/models/base",
        served_name="policy",
        update_dir=tmp_path / "service",
        lora_enabled=True,
        max_lora_rank=16,
        keep_adapter_versions=2,
        pause_mode=pause_mode,
        base_shapes={k: tuple(v) for k, v in BASE_SHAPES.items()},
    )
    app = FastAPI()
    app.state.policy = manager
    app.include_router(router)
    app.state.generations = []

    @app.post("/v1/completions")
    async def completions(request: Request):  # stands in for vLLM's route: echoes the model
        body = await request.json()
        app.state.generations.append(body["model"])
        await asyncio.sleep(body.get("hold_s", 0))
        return {"model": body["model"]}

    @app.get("/health")
    async def health():
        return {}

    app.add_middleware(PolicyVersionMiddleware)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")
    return engine, manager, client


def upload(folder: Path, version: int) -> dict:
    names = ("adapter_config.json", "adapter_model.safetensors")
    return {
        "data": {"version": str(version)},
        "files": [("files", (name, (folder / name).read_bytes())) for name in names],
    }


async def test_adapter_upload_becomes_the_served_version(tmp_path: Path):
    _engine, _manager, client = build(tmp_path)
    before = metrics.WEIGHT_UPDATES.labels("adapter", "ok")._value.get()
    answer = await client.post(
        "/v1/policy/adapter/upload", **upload(write_adapter(tmp_path / "a"), 1)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "policy-v1" and answer.json()["kind"] == "adapter"
    reply = await client.post("/v1/completions", json={"model": "policy", "prompt": [1]})
    assert reply.headers["x-policy-version"] == "1" and reply.json()["model"] == "policy-v1"
    status = (await client.get("/v1/policy")).json()
    assert (status["version"], status["adapter"], status["ready"]) == (1, "policy-v1", True)
    assert metrics.POLICY_VERSION._value.get() == 1
    assert metrics.WEIGHT_UPDATES.labels("adapter", "ok")._value.get() == before + 1


async def test_each_version_gets_a_new_name_and_folder_and_old_ones_retire(tmp_path: Path):
    engine, _manager, client = build(tmp_path)
    paths = []
    for version in (1, 2, 3):
        folder = write_adapter(tmp_path / f"a{version}")
        answer = await client.post(
            "/v1/policy/adapter", json={"version": version, "path": str(folder)}
        )
        assert answer.status_code == 200, answer.text
        paths.append(answer.json()["path"])
    assert len(set(paths)) == 3
    loads = [call for call in engine.calls if call[0] == "load_adapter"]
    assert [name for _, name, _ in loads] == ["policy-v1", "policy-v2", "policy-v3"]
    # The newest two (keep_adapter_versions) stay loaded: an episode pinned to v2 goes on.
    assert ("unload_adapter", "policy-v1") in engine.calls
    assert ("unload_adapter", "policy-v2") not in engine.calls
    kept = sorted(p.name for p in (tmp_path / "service" / "adapters").iterdir())
    assert len(kept) == 2 and kept[-1].startswith("policy-v3")
    reply = await client.post("/v1/completions", json={"model": "policy-v2", "prompt": [1]})
    assert reply.headers["x-policy-version"] == "2" and reply.json()["model"] == "policy-v2"
    reply = await client.post("/v1/completions", json={"model": "policy-v1", "prompt": [1]})
    assert "x-policy-version" not in reply.headers  # retired name: vLLM answers for it


@pytest.mark.parametrize(
    ("setup", "version", "status", "code"),
    [
        ("bad_shape", 6, 400, "INVALID_UPDATE"),
        ("engine_refuses", 6, 500, "ENGINE_ERROR"),
        ("missing", 6, 404, "NOT_FOUND"),
        ("good", 0, 422, None),  # versions start at 1: the wire model refuses 0
    ],
)
async def test_refused_adapters_leave_the_previous_version_serving(
    tmp_path: Path, setup, version, status, code
):
    engine, _manager, client = build(tmp_path)
    good = write_adapter(tmp_path / "good")
    first = await client.post("/v1/policy/adapter", json={"version": 5, "path": str(good)})
    assert first.is_success
    folder = {
        "bad_shape": lambda: write_adapter(
            tmp_path / "bad",
            override={"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (1, 8)},
        ),
        "engine_refuses": lambda: write_adapter(tmp_path / "other"),
        "missing": lambda: tmp_path / "nope",
        "good": lambda: good,
    }[setup]()
    engine.refuse = "rank mismatch in the engine" if setup == "engine_refuses" else None
    answer = await client.post("/v1/policy/adapter", json={"version": version, "path": str(folder)})
    assert answer.status_code == status, answer.text
    if code:
        error = answer.json()["error"]
        assert (error["code"], error["served_version"]) == (code, 5)
    reply = await client.post("/v1/completions", json={"model": "policy", "prompt": [1]})
    assert reply.headers["x-policy-version"] == "5" and reply.json()["model"] == "policy-v5"
    leftovers = [p for p in (tmp_path / "service" / "adapters").iterdir() if "-v6-" in p.name]
    assert leftovers == []  # a refused version leaves no folder behind


async def test_versions_only_move_forward(tmp_path: Path):
    _engine, _manager, client = build(tmp_path)
    folder = write_adapter(tmp_path / "a")
    assert (
        await client.post("/v1/policy/adapter", json={"version": 3, "path": str(folder)})
    ).is_success
    again = await client.post("/v1/policy/adapter", json={"version": 3, "path": str(folder)})
    assert again.status_code == 409 and again.json()["error"]["code"] == "STALE_VERSION"


async def test_a_restarted_trainer_re_establishes_its_version_below_the_served_one(
    tmp_path: Path,
):
    """A trainer resumed from checkpoint 2 while version 4 is served pushes 2 with restart: it
    is served, under a name never used before (vLLM's prefix cache keys on names)."""
    _engine, _manager, client = build(tmp_path)
    folder = write_adapter(tmp_path / "a")
    for version in (2, 4):
        body = {"version": version, "path": str(folder)}
        assert (await client.post("/v1/policy/adapter", json=body)).is_success
    stale = await client.post("/v1/policy/adapter", json={"version": 2, "path": str(folder)})
    assert stale.status_code == 409
    restart = {"version": 2, "path": str(folder), "restart": True}
    answer = await client.post("/v1/policy/adapter", json=restart)
    assert answer.is_success and answer.json()["model"] == "policy-v2-r1"
    assert (await client.get("/v1/policy")).json()["version"] == 2
    upload_answer = await client.post(
        "/v1/policy/adapter/upload",
        data={"version": "0", "restart": "true"},
        files=upload(folder, 0)["files"],
    )
    assert upload_answer.is_success and upload_answer.json()["model"] == "policy-v0-r2"
    reply = await client.post("/v1/completions", json={"model": "policy", "prompt": [1]})
    assert reply.headers["x-policy-version"] == "0"
    zero = await client.post("/v1/policy/adapter", json={"version": 0, "path": str(folder)})
    assert zero.status_code == 422 and "only sent with restart" in zero.text


async def test_unexpected_upload_files_are_refused(tmp_path: Path):
    _engine, _manager, client = build(tmp_path)
    answer = await client.post(
        "/v1/policy/adapter/upload", data={"version": "1"}, files=[("files", ("x.bin", b"1"))]
    )
    assert (
        answer.status_code == 400 and "unexpected adapter file" in answer.json()["error"]["message"]
    )


async def test_full_reload_waits_for_running_generations_and_holds_new_ones(tmp_path: Path):
    engine, _manager, client = build(tmp_path)
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    engine.reload_release = asyncio.Event()
    # held long enough that a loaded machine (two test workers) still sees the update wait
    running = asyncio.create_task(
        client.post("/v1/completions", json={"model": "policy", "prompt": [1], "hold_s": 2.0})
    )
    await asyncio.sleep(0.05)
    update = asyncio.create_task(
        client.post("/v1/policy/weights", json={"version": 2, "path": str(checkpoint)})
    )
    for _ in range(100):  # the update has begun: not ready (a fixed sleep raced under load)
        if (await client.get("/ready")).status_code == 503:
            break
        await asyncio.sleep(0.01)
    assert not running.done()
    assert "reload_weights" not in engine.names()  # waits for the running generation
    assert (await client.get("/ready")).status_code == 503
    first = await running
    assert first.headers["x-policy-version"] == "0"
    await engine.reload_started.wait()
    held = asyncio.create_task(
        client.post("/v1/completions", json={"model": "policy", "prompt": [1]})
    )
    await asyncio.sleep(0.05)
    assert not held.done()  # no generation while the weights are swapped
    engine.reload_release.set()
    assert (await update).status_code == 200
    assert (await held).headers["x-policy-version"] == "2"
    assert engine.names()[-4:] == ["pause", "reload_weights", "reset_prefix_cache", "resume"]
    assert ("pause", "wait") in engine.calls
    assert (await client.get("/ready")).status_code == 200


async def test_wrong_shape_checkpoint_is_refused_before_touching_the_engine(tmp_path: Path):
    engine, manager, client = build(tmp_path)
    bad = write_checkpoint(tmp_path / "bad", {**BASE_SHAPES, "model.embed_tokens.weight": (7, 7)})
    answer = await client.post("/v1/policy/weights", json={"version": 1, "path": str(bad)})
    assert answer.status_code == 400 and "wrong shape" in answer.json()["error"]["message"]
    assert engine.calls == [] and manager.ready


async def test_a_failed_full_reload_is_fatal_for_the_server(tmp_path: Path):
    engine, _manager, client = build(tmp_path, pause_mode="abort")
    engine.fail_reload = "out of memory"
    answer = await client.post(
        "/v1/policy/weights", json={"version": 1, "path": str(write_checkpoint(tmp_path / "c"))}
    )
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "FAILED"
    assert ("pause", "abort") in engine.calls and "resume" not in engine.names()
    assert (await client.get("/health")).status_code == 503
    assert (await client.get("/ready")).status_code == 503
    later = await client.post("/v1/policy/adapter", json={"version": 2, "path": str(tmp_path)})
    assert later.status_code == 503 and "failed earlier" in later.json()["error"]["message"]
    assert metrics.READY._value.get() == 0


async def test_native_transfer_is_bracketed_and_versioned(tmp_path: Path):
    engine, _manager, client = build(tmp_path)
    assert (
        await client.post("/v1/policy/transfer/update", json={"update_info": {}})
    ).status_code == 400
    assert (await client.post("/v1/policy/transfer/init", json={"init_info": {"a": 1}})).is_success
    assert (await client.post("/v1/policy/weights/begin", json={"version": 4})).is_success
    assert (await client.get("/ready")).status_code == 503
    assert (
        await client.post("/v1/policy/transfer/update", json={"update_info": {"n": 1}})
    ).is_success
    done = await client.post("/v1/policy/weights/commit", json={"version": 4})
    assert done.status_code == 200 and done.json()["version"] == 4
    assert engine.names() == [
        "transfer_init", "pause", "transfer_start", "transfer_update", "transfer_finish",
        "reset_prefix_cache", "resume",
    ]  # fmt: skip
    assert (await client.get("/ready")).status_code == 200


@pytest.mark.parametrize("chunks", [0, 1])
async def test_a_transfer_its_trainer_abandoned_does_not_hold_generation_forever(
    tmp_path: Path, chunks: int
):
    """The trainer died between begin and commit. Untouched weights serve again; partly written
    ones are mixed, so the server is marked failed (its pod gets replaced) instead of paused."""
    engine, manager, client = build(tmp_path)
    manager._transfer_timeout_s = 0.2
    assert (await client.post("/v1/policy/weights/begin", json={"version": 4})).is_success
    for _ in range(chunks):
        update = await client.post("/v1/policy/transfer/update", json={"update_info": {"n": 1}})
        assert update.is_success
    assert (await client.get("/ready")).status_code == 503
    await asyncio.sleep(0.5)
    late = await client.post("/v1/policy/weights/commit", json={"version": 4})
    assert late.status_code == 400  # the abandoned transfer cannot be committed any more
    status = (await client.get("/v1/policy")).json()
    assert status["version"] == 0  # the version never moved
    if chunks:
        assert (await client.get("/health")).status_code == 503
        assert "abandoned after 1 chunk" in status["failed"]
    else:
        assert (await client.get("/ready")).status_code == 200 and status["failed"] is None
        assert engine.names()[-1] == "resume"
        reply = await client.post("/v1/completions", json={"model": "policy", "prompt": [1]})
        assert reply.status_code == 200  # generation runs again
