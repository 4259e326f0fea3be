"""Trainer side of the policy-update protocol: push the new policy to the inference service.

``build_callback(cfg.policy_sync)`` returns a TRL/transformers ``TrainerCallback`` that, after every
``sync_every_steps`` optimizer steps, sends the policy to the vLLM service and tags it with a
policy version = the trainer's ``global_step``:

- ``mode: adapter``: only the LoRA adapter (a few MB) is saved and either uploaded over HTTP
  (``/v1/policy/adapter/upload``) or, with ``shared_dir``, written there and announced by path.
- ``mode: full``: the full weights are written to ``shared_dir`` as a safetensors checkpoint and the
  service reloads them (GPU-free path); or, with ``transport: nccl``, broadcast over NCCL with
  vLLM's native weight transfer (GPU clusters; needs vLLM installed in the trainer image).

Every generation then reports the version that produced it (``x-policy-version``), which the
remote generation backend records per sample, so staleness is visible.

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
  a row instead of silently training off-policy.

Wire types: ``services/protocol/inference.py``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
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

    def wait_ready(self, timeout_s: float) -> PolicyStatus:
        """The service's status once it answers ready, waiting with back-off up to
        ``timeout_s``; ``PolicySyncError`` with its last answer when time is up."""
        deadline = time.monotonic() + timeout_s
        delay = 1.0
        while True:
            try:
                status = self.status()
                if status.ready:
                    return status
                last = f"not ready ({status.failed or 'updating'})"
            except PolicySyncError as error:
                last = str(error)
            if time.monotonic() + delay > deadline:
                raise PolicySyncError(
                    f"inference service {self._http.base_url} not ready after "
                    f"{timeout_s:.0f} s: {last}"
                )
            log.info("waiting for the inference service %s: %s", self._http.base_url, last)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

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


def _unwrap(model):
    return getattr(model, "module", model)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


class PolicyPusher:
    """Saves the policy in the form the service wants and pushes it under a version number."""

    def __init__(
        self,
        client: PolicyClient,
        *,
        mode: Literal["adapter", "full"],
        settings,
        shared_dir: Path | None,
    ) -> None:
        self.client = client
        self.mode = mode
        self.settings = settings  # PolicySyncConfig
        self.shared_dir = shared_dir
        self.transport = self._transport()
        self._nccl = None

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

    def push(self, model, version: int, *, restart: bool = False) -> PolicyUpdateResult:
        model = _unwrap(model)
        if self.mode == "adapter" and not _is_peft(model):
            raise PolicySyncError("policy_sync.mode 'adapter' needs a LoRA (PEFT) model")
        if self.transport == "nccl":
            return self._push_nccl(model, version, restart)
        if self.transport == "upload":
            with tempfile.TemporaryDirectory(prefix="adapter-") as scratch:
                model.save_pretrained(scratch, selected_adapters=["default"])
                return self.client.push_adapter_files(version, Path(scratch), restart=restart)
        folder = self._save_to_shared_dir(model, version)
        service_path = str(folder)
        if self.settings.service_shared_dir:
            relative = folder.relative_to(self.shared_dir)
            service_path = str(Path(self.settings.service_shared_dir) / relative)
        push = (
            self.client.push_adapter_path if self.mode == "adapter" else self.client.push_full_path
        )
        result = push(version, service_path, restart=restart)
        self._prune(folder.parent)
        return result

    def _save_to_shared_dir(self, model, version: int) -> Path:
        """Write into a temporary folder, then rename: the service never sees half a checkpoint."""
        assert self.shared_dir is not None
        parent = self.shared_dir / self.mode
        parent.mkdir(parents=True, exist_ok=True)
        final = parent / f"v{version:08d}"
        scratch = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=parent))
        if self.mode == "adapter":
            model.save_pretrained(scratch, selected_adapters=["default"])
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

    def _push_nccl(self, model, version: int, restart: bool) -> PolicyUpdateResult:
        """vLLM's native NCCL broadcast, bracketed so no generation runs on half-written weights.

        Not runnable here (no GPU): it follows vLLM's documented trainer-side API and needs
        ``vllm`` importable in the trainer and ``weight_transfer_backend: nccl`` on the service.
        """
        if _is_peft(model):
            raise PolicySyncError("the NCCL path sends full weights: train without LoRA")
        if self._nccl is None:
            self._nccl = _nccl_engine(self.client, model, self.settings)
        self.client.begin_transfer(version, restart=restart)
        try:
            self._nccl.send_weights()
        except Exception:
            self.client.commit_transfer(version, succeeded=False)
            raise
        return self.client.commit_transfer(version, succeeded=True)


def _nccl_engine(client: PolicyClient, model, settings):
    from vllm.distributed.weight_transfer.base import ModuleSource
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerInitInfo,
        NCCLTrainerWeightTransferEngine,
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
    """Pushes the policy after every ``every`` optimizer steps, and re-establishes the trainer's
    version on the service at train begin (see the module docstring)."""

    def __init__(
        self,
        pusher: PolicyPusher,
        *,
        every: int,
        max_refusals: int,
        wait_ready_s: float,
        push_at_start: bool = False,
    ) -> None:
        self.pusher = pusher
        self.push_at_start = push_at_start
        self.every = every
        self.max_refusals = max_refusals
        self.wait_ready_s = wait_ready_s
        self.refusals = 0
        self.pushed_version: int | None = None
        self.last_result: PolicyUpdateResult | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        served = self.pusher.client.wait_ready(self.wait_ready_s)
        fresh = served.version == state.global_step == 0
        if fresh and not self.push_at_start:
            self.pushed_version = 0  # a fresh service and a fresh trainer: nothing to send
            return
        log.info(
            "trainer at step %d, service at version %d: pushing the trainer's policy (restart)",
            state.global_step,
            served.version,
        )
        self._push(model, state.global_step, restart=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self._push(model, state.global_step)

    def _push(self, model, version: int, *, restart: bool = False) -> None:
        if model is None or (
            not restart and self.pushed_version is not None and version <= self.pushed_version
        ):
            return
        started = time.perf_counter()
        deadline = time.monotonic() + self.wait_ready_s
        while True:
            try:
                result = self.pusher.push(model, version, restart=restart)
                break
            except PolicySyncError as error:
                if error.refused:
                    self._refused(version, error)
                    return
                self._wait_for_service(version, error, deadline)
        self.refusals = 0
        self.pushed_version = version
        self.last_result = result
        log.info(
            "policy version %d active on the inference service (%s, %.2f s, server %.3f s)",
            version, result.kind, time.perf_counter() - started, result.seconds,
        )  # fmt: skip

    def _wait_for_service(self, version: int, error: PolicySyncError, deadline: float) -> None:
        """A push that got no answer waits for the service (back-off) until ``deadline``."""
        log.warning("policy push of version %d could not get through: %s", version, error)
        try:
            if time.monotonic() > deadline:
                raise error
            self.pusher.client.wait_ready(max(deadline - time.monotonic(), 0.0))
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


def build_callback(config, *, push_at_start: bool = False) -> PolicySyncCallback:
    """The callback for the trainer's ``policy_sync`` section (``PolicySyncConfig``);
    ``push_at_start``: the policy is not what the service loaded (GRPO after the SFT stage)."""
    api_key = None
    if config.api_key_env:
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            raise ValueError(
                f"policy_sync.api_key_env: ${config.api_key_env} is not set (the pod needs the "
                "Secret key that holds the inference API key)"
            )
    client = PolicyClient(config.base_url, api_key=api_key, timeout_s=config.timeout_s)
    shared_dir = Path(config.shared_dir) if config.shared_dir else None
    pusher = PolicyPusher(client, mode=config.mode, settings=config, shared_dir=shared_dir)
    return PolicySyncCallback(
        pusher,
        every=config.sync_every_steps,
        max_refusals=config.max_consecutive_refusals,
        wait_ready_s=config.wait_ready_s,
        push_at_start=push_at_start,
    )
