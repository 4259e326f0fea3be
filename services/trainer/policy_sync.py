"""Trainer side of the policy-update protocol: push the new policy to the inference service.

``build_callback(cfg.policy_sync)`` returns a TRL/transformers ``TrainerCallback`` that, after every
``sync_every_steps`` optimizer steps, sends the policy to the vLLM service and tags it with a
policy version = the trainer's ``global_step``:

- ``mode: adapter``: only the LoRA adapter (a few MB) is saved and either uploaded over HTTP
  (``/v1/policy/adapter/upload``) or, with ``shared_dir``, written there and announced by path.
- ``mode: full``: the full weights are written to ``shared_dir`` as a safetensors checkpoint and the
  service reloads them (GPU-free path); or, with ``transport: nccl``, broadcast over NCCL with
  vLLM's native weight transfer (GPU clusters; needs vLLM installed in the trainer image).

The service may be N replicas (``policy_sync.servers``): the policy is saved once and sent to
every replica; the rules for replicas that refuse, die or rejoin are in
``services/trainer/replicas.py``. Rank 0 pushes; when FSDP2 or ZeRO-3 shards the policy over
several trainer processes every rank holds the callback and joins the gather of each pushed
version. Every generation reports the version that produced it (``x-policy-version``), which
the remote generation backend records per sample, so staleness is visible.

What happens when things go wrong (each case tested):

- The trainer starts (fresh, resumed or replaced) while the service serves another version (a
  resume goes back to its checkpoint, behind the version it had pushed), or GRPO starts from
  the SFT stage's model, which the service never loaded: at train begin it waits for the
  service, then pushes its own policy with ``restart``, which the service accepts below its
  served version. Versions are step counts again from there on.
- The service cannot be reached (starting, restarting): the push waits with back-off up to
  ``wait_ready_s`` and then stops training with the reason; an unreachable service is never
  counted as a refusal.
- The service refuses a push (bad files, wrong shapes, stale version): it keeps serving the
  previous version; the trainer logs it and stops after ``max_consecutive_refusals`` refusals in
  a row instead of silently training off-policy. With several replicas a push is refused only
  when every replica refused it.

Wire types: ``services/protocol/inference.py``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from transformers import TrainerCallback

from services.protocol.inference import (
    AdapterUpdate,
    FullUpdate,
    PolicyStatus,
    PolicyUpdateError,
    PolicyUpdateResult,
    WeightTransferBegin,
    WeightTransferCommit,
)
from services.trainer import distributed
from services.trainer.distributed import SINGLE, World
from services.trainer.replicas import ReplicaSet, replica_set

log = logging.getLogger(__name__)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class PolicySyncError(RuntimeError):
    """A push the service refused or could not take; ``code`` is the service's error code.

    ``status`` is None when no answer came back (connection refused, timeout): the service is
    unreachable, which is waited out rather than counted as a refusal.
    """

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def refused(self) -> bool:
        """The service answered and said no (as opposed to not answering)."""
        return self.status is not None


class PolicyClient:
    """Synchronous client of the update routes (TrainerCallbacks run synchronously)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def status(self) -> PolicyStatus:
        return PolicyStatus.model_validate(self._call("GET", "/v1/policy"))

    def push_adapter_files(
        self, version: int, folder: Path, *, restart: bool = False
    ) -> PolicyUpdateResult:
        files = [("files", (name, (folder / name).read_bytes())) for name in ADAPTER_FILES]
        form = {"version": str(version), "restart": "true" if restart else "false"}
        answer = self._call("POST", "/v1/policy/adapter/upload", data=form, files=files)
        return PolicyUpdateResult.model_validate(answer)

    def push_adapter_path(
        self, version: int, path: str, *, restart: bool = False
    ) -> PolicyUpdateResult:
        body = AdapterUpdate(version=version, path=path, restart=restart).model_dump()
        return PolicyUpdateResult.model_validate(
            self._call("POST", "/v1/policy/adapter", json=body)
        )

    def push_full_path(
        self, version: int, path: str, *, restart: bool = False
    ) -> PolicyUpdateResult:
        body = FullUpdate(version=version, path=path, restart=restart).model_dump()
        return PolicyUpdateResult.model_validate(
            self._call("POST", "/v1/policy/weights", json=body)
        )

    def begin_transfer(self, version: int, *, restart: bool = False) -> None:
        body = WeightTransferBegin(version=version, restart=restart).model_dump()
        self._call("POST", "/v1/policy/weights/begin", json=body)

    def commit_transfer(self, version: int, succeeded: bool) -> PolicyUpdateResult:
        body = WeightTransferCommit(version=version, succeeded=succeeded).model_dump()
        return PolicyUpdateResult.model_validate(
            self._call("POST", "/v1/policy/weights/commit", json=body)
        )

    def transfer(self, operation: str, payload: dict[str, Any]) -> None:
        """vLLM's native weight-transfer control plane, behind our authenticated routes."""
        self._call("POST", f"/v1/policy/transfer/{operation}", json=payload)

    def _call(self, method: str, path: str, **kwargs) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise PolicySyncError(f"{method} {path}: {error!r}") from error
        if response.status_code == 200:
            return response.json()
        try:
            detail = PolicyUpdateError.model_validate(response.json()).error
            raise PolicySyncError(
                f"{method} {path}: {detail.code}: {detail.message} "
                f"(still serving version {detail.served_version})",
                code=detail.code.value,
                status=response.status_code,
            )
        except ValueError:  # not our error body (vLLM validation, proxy error page, ...)
            raise PolicySyncError(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}",
                status=response.status_code,
            ) from None


def _answer(answer: PolicyStatus | PolicySyncError) -> str:
    if isinstance(answer, PolicySyncError):
        return str(answer)
    return "ready" if answer.ready else f"not ready ({answer.failed or 'updating'})"


def _unwrap(model):
    return getattr(model, "module", model)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


@dataclass
class FanOut:
    """What each replica answered to one version: the push is done if any replica took it."""

    version: int
    accepted: dict[str, PolicyUpdateResult] = field(default_factory=dict)
    refused: dict[str, PolicySyncError] = field(default_factory=dict)
    unreachable: dict[str, PolicySyncError] = field(default_factory=dict)

    def error(self) -> PolicySyncError:
        """The push's failure when no replica took it: a refusal only if every one said no."""
        failures = {**self.refused, **self.unreachable}
        if len(failures) == 1:
            return next(iter(failures.values()))
        detail = "; ".join(f"{url}: {error}" for url, error in failures.items())
        first = next(iter(self.refused.values()), None)
        if first is None or self.unreachable:
            return PolicySyncError(detail or "no inference replica discovered")
        return PolicySyncError(detail, code=first.code, status=first.status)


class PolicyPusher:
    """Saves the policy once in the form the service wants and sends it to every replica."""

    def __init__(
        self,
        replicas: ReplicaSet,
        client: Callable[[str], PolicyClient],
        *,
        mode: Literal["adapter", "full"],
        settings,
        shared_dir: Path | None,
    ) -> None:
        self.replicas = replicas
        self._make_client = client
        self._clients: dict[str, PolicyClient] = {}
        self.mode = mode
        self.settings = settings  # PolicySyncConfig
        self.shared_dir = shared_dir
        self.transport = self._transport()
        self._nccl = None
        self._saved: tuple[int, Path | str] | None = None  # the last version's files, to re-send
        self._scratch = (
            Path(tempfile.mkdtemp(prefix="policy-push-")) if self.transport == "upload" else None
        )

    def client(self, url: str) -> PolicyClient:
        if url not in self._clients:
            self._clients[url] = self._make_client(url)
        return self._clients[url]

    def _transport(self) -> str:
        chosen = self.settings.transport
        if chosen == "auto":
            if self.mode == "adapter":
                return "shared_dir" if self.shared_dir else "upload"
            chosen = "shared_dir"
        if chosen == "nccl" and self.mode != "full":
            raise ValueError("policy_sync.transport 'nccl' needs policy_sync.mode 'full'")
        if chosen == "upload" and self.mode != "adapter":
            raise ValueError("full weights are too big to upload: set policy_sync.shared_dir")
        if chosen == "shared_dir" and self.shared_dir is None:
            raise ValueError(
                f"policy_sync.mode '{self.mode}' by shared_dir needs policy_sync.shared_dir"
            )
        return chosen

    def statuses(self) -> dict[str, PolicyStatus | PolicySyncError]:
        """Every replica's status (or why it did not answer), recorded in the replica set."""
        answers: dict[str, PolicyStatus | PolicySyncError] = {}
        for replica in self.replicas.all():
            try:
                status = self.client(replica.url).status()
                self.replicas.served(replica.url, status.version, up=status.ready)
                answers[replica.url] = status
            except PolicySyncError as error:
                self.replicas.failed(replica.url, str(error))
                answers[replica.url] = error
        return answers

    def push(
        self, model, version: int, *, restart: bool = False, weights: dict | None = None
    ) -> FanOut:
        """Save ``version`` once and send it to every replica (``FanOut`` says who took it).
        ``weights``: what ``PolicySyncCallback`` gathered when FSDP2 or ZeRO-3 shards ``model``."""
        model = _unwrap(model)
        if weights is not None and self.mode == "full":  # a copy of our own: merge it in place
            model = distributed.unsharded_copy(model, weights)
            model = model.merge_and_unload() if _is_peft(model) else model
            weights = None
        if self.mode == "adapter" and not _is_peft(model):
            raise PolicySyncError("policy_sync.mode 'adapter' needs a LoRA (PEFT) model")
        urls = [r.url for r in self.replicas.all()]
        if self.transport == "nccl":
            if len(urls) != 1:
                raise PolicySyncError(
                    f"the NCCL transport sends to one replica, and {len(urls)} are discovered: "
                    "use transport shared_dir for several"
                )
            return self._send(
                urls, version, lambda url: self._push_nccl(url, model, version, restart)
            )
        if self.transport == "upload":
            shutil.rmtree(self._scratch, ignore_errors=True)
            model.save_pretrained(self._scratch, selected_adapters=["default"], state_dict=weights)
            self._saved = (version, self._scratch)
        else:
            folder = self._save_to_shared_dir(model, version, weights)
            service_path = str(folder)
            if self.settings.service_shared_dir:
                relative = folder.relative_to(self.shared_dir)
                service_path = str(Path(self.settings.service_shared_dir) / relative)
            self._saved = (version, service_path)
            self._prune(folder.parent)
        return self.resend(urls, restart=restart)

    def resend(self, urls: list[str], *, restart: bool = True) -> FanOut:
        """Send the last pushed version's files again (a replica that was behind or restarted)."""
        if self._saved is None or self.transport == "nccl":
            return FanOut(self._saved[0] if self._saved else 0)
        version, files = self._saved

        def send(url: str) -> PolicyUpdateResult:
            client = self.client(url)
            if self.transport == "upload":
                return client.push_adapter_files(version, Path(files), restart=restart)
            if self.mode == "adapter":
                return client.push_adapter_path(version, str(files), restart=restart)
            return client.push_full_path(version, str(files), restart=restart)

        return self._send(urls, version, send)

    def _send(
        self, urls: list[str], version: int, send: Callable[[str], PolicyUpdateResult]
    ) -> FanOut:
        """``send`` to every replica at once; each answer recorded in the replica set."""
        outcome = FanOut(version)
        if not urls:
            return outcome
        with ThreadPoolExecutor(max_workers=len(urls), thread_name_prefix="policy-push") as pool:
            futures = {url: pool.submit(send, url) for url in urls}
        for url, future in futures.items():
            try:
                outcome.accepted[url] = future.result()
                self.replicas.served(url, version)
            except PolicySyncError as error:
                if error.refused:
                    outcome.refused[url] = error
                    self.replicas.served(url, None, reason=f"refused version {version}")
                else:
                    outcome.unreachable[url] = error
                    self.replicas.failed(url, str(error))
        return outcome

    def _save_to_shared_dir(self, model, version: int, weights: dict | None) -> Path:
        """Write into a temporary folder, then rename: the service never sees half a checkpoint."""
        assert self.shared_dir is not None
        parent = self.shared_dir / self.mode
        parent.mkdir(parents=True, exist_ok=True)
        final = parent / f"v{version:08d}"
        scratch = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=parent))
        if self.mode == "adapter":
            model.save_pretrained(scratch, selected_adapters=["default"], state_dict=weights)
        else:
            full = copy.deepcopy(model).merge_and_unload() if _is_peft(model) else model
            full.save_pretrained(scratch, safe_serialization=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch, final)
        return final

    def _prune(self, parent: Path) -> None:
        versions = sorted(p for p in parent.iterdir() if p.is_dir() and p.name.startswith("v"))
        for stale in versions[: -self.settings.keep_versions]:
            shutil.rmtree(stale, ignore_errors=True)

    def _push_nccl(self, url: str, model, version: int, restart: bool) -> PolicyUpdateResult:
        """vLLM's native NCCL broadcast, bracketed so no generation runs on half-written weights.

        Not runnable here (no GPU): it follows vLLM's documented trainer-side API and needs
        vLLM's trainer side (``vllm_transfer_side``) and ``weight_transfer_backend: nccl`` on
        the service.
        """
        if _is_peft(model):
            raise PolicySyncError("the NCCL path sends full weights: train without LoRA")
        client = self.client(url)
        if self._nccl is None:
            self._nccl = _nccl_engine(client, model, self.settings)
        client.begin_transfer(version, restart=restart)
        try:
            self._nccl.send_weights()
        except Exception:
            client.commit_transfer(version, succeeded=False)
            raise
        return client.commit_transfer(version, succeeded=True)


def vllm_transfer_side(vllm_path: Path):
    """vLLM's trainer-side NCCL transfer (``ModuleSource``, ``NCCLTrainerInitInfo``,
    ``NCCLTrainerWeightTransferEngine``): from vLLM as installed, else from ``vllm_path`` (the
    trainer image's /opt/vllm-nccl, added to sys.path only now, after TRL has looked for vLLM)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        if not (vllm_path / "vllm").is_dir():
            raise PolicySyncError(
                "policy_sync.transport nccl needs vLLM's trainer side: build the trainer image "
                f"with NCCL_TRANSFER=true (docker/requirements-nccl.txt into {vllm_path}), or "
                "point policy_sync.nccl.vllm_path at such a folder; or push full weights "
                "through policy_sync.shared_dir"
            ) from None
        sys.path.append(str(vllm_path))
    from vllm.distributed.weight_transfer.base import ModuleSource
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerInitInfo,
        NCCLTrainerWeightTransferEngine,
    )

    return ModuleSource, NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine


def _nccl_engine(client: PolicyClient, model, settings):
    ModuleSource, NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine = vllm_transfer_side(
        settings.nccl.vllm_path
    )

    class _Control:
        """vLLM's weight-sync client protocol over our authenticated /v1/policy/transfer routes.

        start/finish are no-ops: ``begin_transfer``/``commit_transfer`` do them with the version.
        """

        def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
            client.transfer("init", {"init_info": init_info})

        def shutdown_weight_transfer_engine(self) -> None:
            client.transfer("shutdown", {})

        def start_weight_update(self) -> None:
            pass

        def update_weights(self, update_info) -> None:
            client.transfer("update", {"update_info": update_info})

        def finish_weight_update(self, weight_version: str | None = None) -> None:
            pass

    init_info = NCCLTrainerInitInfo(
        master_address=settings.nccl.master_address,
        master_port=settings.nccl.master_port,
        world_size=settings.nccl.world_size,
        rank=0,
    )
    return NCCLTrainerWeightTransferEngine.trainer_init(
        init_info, client=_Control(), source=ModuleSource(model)
    )


class PolicySyncCallback(TrainerCallback):
    """Pushes the policy to every replica after every ``every`` optimizer steps, re-sends it to
    replicas that fell behind before each step, and re-establishes the trainer's version on the
    service at train begin (see the module docstring). ``pusher`` is None on ranks other than 0,
    which only join the gathers of a sharded policy."""

    def __init__(
        self,
        pusher: PolicyPusher | None,
        *,
        mode: Literal["adapter", "full"],
        every: int,
        max_refusals: int,
        wait_ready_s: float,
        push_at_start: bool = False,
        world: World = SINGLE,
    ) -> None:
        self.pusher = pusher
        self.replicas = pusher.replicas if pusher else None
        if pusher is not None:
            pusher.replicas.catch_up = pusher.resend
        self.mode = mode
        self.world = world
        self.push_at_start = push_at_start
        self.every = every
        self.max_refusals = max_refusals
        self.wait_ready_s = wait_ready_s
        self.refusals = 0
        self.pushed_version: int | None = None
        self.last_result: FanOut | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        push = self._push_at_train_begin(state) if self.pusher else None
        if self.world.distributed and distributed.sharded(model):
            push = distributed.broadcast(push, self.world)
        if push:
            self._push(model, state.global_step, restart=True)

    def _push_at_train_begin(self, state) -> bool:
        """Whether the trainer's policy must be pushed before the first step: not when a fresh
        trainer meets a fresh service (it already serves the starting policy)."""
        served = self._wait_ready(time.monotonic() + self.wait_ready_s)
        fresh = state.global_step == 0 and all(s.version == 0 for s in served.values())
        if fresh and not self.push_at_start:
            self.pushed_version = 0  # a fresh service and a fresh trainer: nothing to send
            self.replicas.pushed(0)
            return False
        log.info(
            "trainer at step %d, service at version(s) %s: pushing the trainer's policy (restart)",
            state.global_step,
            sorted({s.version for s in served.values()}),
        )
        return True

    def on_step_begin(self, args, state, control, **kwargs):
        """Before the step's rollout, ask every replica what it serves and send the pushed
        version to those behind it (restarted, refused, new); the ones that cannot be reached
        are left out of generation until a later try."""
        if self.pusher is None or self.pushed_version is None:
            return
        statuses = self.pusher.statuses()
        stale = [
            url
            for url, status in statuses.items()
            if isinstance(status, PolicyStatus) and status.version != self.pushed_version
        ]
        if stale:
            outcome = self.pusher.resend(stale)
            missed = sorted({**outcome.refused, **outcome.unreachable})
            log.info(
                "replicas behind version %d brought up to date: %s%s",
                self.pushed_version,
                sorted(outcome.accepted) or "none",
                f"; still behind: {missed}" if missed else "",
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._push(model, state.global_step)

    def _gather(self, model) -> dict | None:
        """The sharded policy's whole weights for rank 0 (every rank joins); None unsharded."""
        if model is None or not distributed.sharded(model):
            return None
        adapter = "default" if self.mode == "adapter" else None
        return distributed.gather_weights(model, self.world, adapter=adapter)

    def _push(self, model, version: int, *, restart: bool = False) -> None:
        weights = self._gather(model)
        if (
            self.pusher is None
            or model is None
            or (not restart and self.pushed_version is not None and version <= self.pushed_version)
        ):
            return
        started = time.perf_counter()
        deadline = time.monotonic() + self.wait_ready_s
        while True:
            outcome = self.pusher.push(model, version, restart=restart, weights=weights)
            if outcome.accepted:
                break
            error = outcome.error()
            if error.refused:
                self._refused(version, error)
                return
            self._wait_for_service(version, error, deadline)
        self.refusals = 0
        self.pushed_version = version
        self.replicas.pushed(version)
        self.last_result = outcome
        missed = {**outcome.refused, **outcome.unreachable}
        seconds = max(r.seconds for r in outcome.accepted.values())
        log.info(
            "policy version %d active on %d of %d replicas (%s, %.2f s, server %.3f s)%s",
            version, len(outcome.accepted), len(outcome.accepted) + len(missed),
            next(iter(outcome.accepted.values())).kind, time.perf_counter() - started, seconds,
            f"; behind, no traffic until updated: {sorted(missed)}" if missed else "",
        )  # fmt: skip

    def _wait_ready(self, deadline: float) -> dict[str, PolicyStatus]:
        """The status of every replica that answers ready, once at least one does; waits with
        back-off until ``deadline``, then ``PolicySyncError`` with the last answers."""
        delay = 1.0
        while True:
            answers = self.pusher.statuses()
            ready = {u: a for u, a in answers.items() if isinstance(a, PolicyStatus) and a.ready}
            if ready:
                return ready
            last = "; ".join(f"{url}: {_answer(a)}" for url, a in answers.items())
            last = last or "no replica discovered yet"
            if time.monotonic() + delay > deadline:
                raise PolicySyncError(
                    f"inference service not ready after {self.wait_ready_s:.0f} s: {last}"
                )
            log.info("waiting for the inference service: %s", last)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _wait_for_service(self, version: int, error: PolicySyncError, deadline: float) -> None:
        """A push that no replica answered waits for the service (back-off) until ``deadline``."""
        log.warning("policy push of version %d could not get through: %s", version, error)
        try:
            if time.monotonic() > deadline:
                raise error
            self._wait_ready(deadline)
        except PolicySyncError as last:
            raise PolicySyncError(
                f"policy push of version {version}: the inference service was unreachable for "
                f"{self.wait_ready_s:.0f} s: {last}"
            ) from last

    def _refused(self, version: int, error: PolicySyncError) -> None:
        self.refusals += 1
        log.error(
            "policy push of version %d refused (%d in a row): %s", version, self.refusals, error
        )
        if self.refusals >= self.max_refusals:
            raise error


def build_callback(
    config,
    *,
    push_at_start: bool = False,
    replicas: ReplicaSet | None = None,
    world: World = SINGLE,
) -> PolicySyncCallback:
    """The callback for the trainer's ``policy_sync`` section (``PolicySyncConfig``);
    ``push_at_start``: the policy is not what the service loaded (GRPO after the SFT stage);
    ``replicas``: the set the generation backend uses too (None: its own, from ``servers``);
    ``world``: ranks other than 0 get a callback that only joins the gathers (no pusher)."""
    settings = dict(
        mode=config.mode,
        every=config.sync_every_steps,
        max_refusals=config.max_consecutive_refusals,
        wait_ready_s=config.wait_ready_s,
        push_at_start=push_at_start,
        world=world,
    )
    if not world.main:
        return PolicySyncCallback(None, **settings)
    api_key = None
    if config.api_key_env:
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            raise ValueError(
                f"policy_sync.api_key_env: ${config.api_key_env} is not set (the pod needs the "
                "Secret key that holds the inference API key)"
            )
    shared_dir = Path(config.shared_dir) if config.shared_dir else None
    pusher = PolicyPusher(
        replicas or replica_set(config.servers),
        lambda url: PolicyClient(url, api_key=api_key, timeout_s=config.timeout_s),
        mode=config.mode,
        settings=config,
        shared_dir=shared_dir,
    )
    return PolicySyncCallback(pusher, **settings)
