"""Trainer side of the policy-update protocol: push the new policy to the inference service.

``build_callback(cfg.inference, trainer=, backend=)`` returns a TRL/transformers ``TrainerCallback``
that, after every ``sync_every_steps`` optimizer steps, sends the policy to the vLLM service and
tags it with a policy version = the trainer's ``global_step`` (monotonic, survives resumes):

- ``mode: adapter``: only the LoRA adapter (a few MB) is saved and either uploaded over HTTP
  (``/v1/policy/adapter/upload``) or, with ``shared_dir``, written there and announced by path.
- ``mode: full``: the full weights are written to ``shared_dir`` as a safetensors checkpoint and the
  service reloads them (GPU-free path); or, with ``extra.transport: nccl``, broadcast over NCCL with
  vLLM's native weight transfer (GPU clusters; needs vLLM installed in the trainer image).

Every generation then reports the version that produced it (``x-policy-version``), which the
remote generation backend records per sample, so staleness is visible. A refused push leaves the
service on its previous version; the trainer logs it and raises after
``extra.max_consecutive_failures`` refusals in a row instead of silently training off-policy.
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
from pydantic import BaseModel, ConfigDict, Field
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
    """A push the service refused or could not take; ``code`` is the service's error code."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class PolicySyncSettings(BaseModel):
    """Settings in ``inference.extra`` (the trainer's ``inference:`` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["auto", "upload", "shared_dir", "nccl"] = Field(
        "auto",
        description=(
            "auto: adapters by upload (or shared_dir when set), full weights by shared_dir. "
            "nccl: full weights by vLLM's native NCCL weight transfer (GPUs on both sides)."
        ),
    )
    service_shared_dir: str | None = Field(
        None, description="shared_dir as the inference service mounts it (default: same path)."
    )
    keep_versions: int = Field(2, ge=1, description="Versions kept in shared_dir (newest).")
    api_key_env: str | None = Field(None, description="Env var with the service's API key.")
    timeout_s: float = Field(600.0, gt=0, description="Per request; a full reload may be slow.")
    max_consecutive_failures: int = Field(
        3, ge=1, description="Refused pushes in a row before training stops with an error."
    )
    nccl_master_address: str = Field("127.0.0.1", description="NCCL rendezvous host (trainer).")
    nccl_master_port: int = Field(29551, description="NCCL rendezvous port (trainer).")
    nccl_world_size: int = Field(2, ge=2, description="1 trainer rank + the vLLM workers.")


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

    def push_adapter_files(self, version: int, folder: Path) -> PolicyUpdateResult:
        files = [("files", (name, (folder / name).read_bytes())) for name in ADAPTER_FILES]
        answer = self._call(
            "POST", "/v1/policy/adapter/upload", data={"version": str(version)}, files=files
        )
        return PolicyUpdateResult.model_validate(answer)

    def push_adapter_path(self, version: int, path: str) -> PolicyUpdateResult:
        body = AdapterUpdate(version=version, path=path).model_dump()
        return PolicyUpdateResult.model_validate(
            self._call("POST", "/v1/policy/adapter", json=body)
        )

    def push_full_path(self, version: int, path: str) -> PolicyUpdateResult:
        body = FullUpdate(version=version, path=path).model_dump()
        return PolicyUpdateResult.model_validate(
            self._call("POST", "/v1/policy/weights", json=body)
        )

    def begin_transfer(self, version: int) -> None:
        body = WeightTransferBegin(version=version).model_dump()
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
        settings: PolicySyncSettings,
        shared_dir: Path | None,
    ) -> None:
        self.client = client
        self.mode = mode
        self.settings = settings
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
            raise ValueError("inference.extra.transport 'nccl' needs inference.mode 'full'")
        if chosen == "upload" and self.mode != "adapter":
            raise ValueError("full weights are too big to upload: set inference.shared_dir")
        if chosen == "shared_dir" and self.shared_dir is None:
            raise ValueError(
                f"inference.mode '{self.mode}' by shared_dir needs inference.shared_dir"
            )
        return chosen

    def push(self, model, version: int) -> PolicyUpdateResult:
        model = _unwrap(model)
        if self.mode == "adapter" and not _is_peft(model):
            raise PolicySyncError("inference.mode 'adapter' needs a LoRA (PEFT) model")
        if self.transport == "nccl":
            return self._push_nccl(model, version)
        if self.transport == "upload":
            with tempfile.TemporaryDirectory(prefix="adapter-") as scratch:
                model.save_pretrained(scratch)
                return self.client.push_adapter_files(version, Path(scratch))
        folder = self._save_to_shared_dir(model, version)
        service_path = str(folder)
        if self.settings.service_shared_dir:
            relative = folder.relative_to(self.shared_dir)
            service_path = str(Path(self.settings.service_shared_dir) / relative)
        push = (
            self.client.push_adapter_path if self.mode == "adapter" else self.client.push_full_path
        )
        result = push(version, service_path)
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
            model.save_pretrained(scratch)
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

    def _push_nccl(self, model, version: int) -> PolicyUpdateResult:
        """vLLM's native NCCL broadcast, bracketed so no generation runs on half-written weights.

        Not runnable here (no GPU): it follows vLLM's documented trainer-side API and needs
        ``vllm`` importable in the trainer and ``weight_transfer_backend: nccl`` on the service.
        """
        if _is_peft(model):
            raise PolicySyncError("the NCCL path sends full weights: train without LoRA")
        if self._nccl is None:
            self._nccl = _nccl_engine(self.client, model, self.settings)
        self.client.begin_transfer(version)
        try:
            self._nccl.send_weights()
        except Exception:
            self.client.commit_transfer(version, succeeded=False)
            raise
        return self.client.commit_transfer(version, succeeded=True)


def _nccl_engine(client: PolicyClient, model, settings: PolicySyncSettings):
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
        master_address=settings.nccl_master_address,
        master_port=settings.nccl_master_port,
        world_size=settings.nccl_world_size,
        rank=0,
    )
    return NCCLTrainerWeightTransferEngine.trainer_init(
        init_info, client=_Control(), source=ModuleSource(model)
    )


class PolicySyncCallback(TrainerCallback):
    """Pushes the policy after every ``every`` optimizer steps (and at the start of a resume)."""

    def __init__(self, pusher: PolicyPusher, *, every: int, max_failures: int) -> None:
        self.pusher = pusher
        self.every = every
        self.max_failures = max_failures
        self.failures = 0
        self.pushed_version = 0
        self.last_result: PolicyUpdateResult | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0 and state.is_world_process_zero:  # resumed: service has base
            self._push(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self._push(model, state.global_step)

    def _push(self, model, version: int) -> None:
        if model is None or version <= self.pushed_version:
            return
        started = time.perf_counter()
        try:
            result = self.pusher.push(model, version)
        except PolicySyncError as error:
            self.failures += 1
            log.error(
                "policy push of version %d failed (%d in a row): %s", version, self.failures, error
            )
            if self.failures >= self.max_failures:
                raise
            return
        self.failures = 0
        self.pushed_version = version
        self.last_result = result
        log.info(
            "policy version %d active on the inference service (%s, %.2f s, server %.3f s)",
            version, result.kind, time.perf_counter() - started, result.seconds,
        )  # fmt: skip


def build_callback(inference_cfg, *, trainer=None, backend=None) -> PolicySyncCallback:
    """The callback for the trainer's ``inference:`` section (``services.trainer.config``)."""
    del trainer, backend  # the remote backend reads versions from the replies themselves
    settings = PolicySyncSettings.model_validate(inference_cfg.extra or {})
    api_key = None
    if settings.api_key_env:
        api_key = os.environ.get(settings.api_key_env)
        if not api_key:
            raise ValueError(f"inference.extra.api_key_env: ${settings.api_key_env} is not set")
    client = PolicyClient(inference_cfg.base_url, api_key=api_key, timeout_s=settings.timeout_s)
    shared_dir = Path(inference_cfg.shared_dir) if inference_cfg.shared_dir else None
    pusher = PolicyPusher(client, mode=inference_cfg.mode, settings=settings, shared_dir=shared_dir)
    return PolicySyncCallback(
        pusher, every=inference_cfg.sync_every_steps, max_failures=settings.max_consecutive_failures
    )
