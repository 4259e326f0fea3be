"""The served policy version and the rules for changing it.

``PolicyManager`` owns the version number, applies updates through an ``Engine`` (vLLM's engine
client behind a thin adapter in ``server.py``) and guarantees:

- a refused or failed adapter update leaves the previous version serving;
- every generation runs entirely on one version: full updates wait for (or abort) running
  generations through ``GenerationGate`` and vLLM's pause, and hold new ones until the swap is done;
- each adapter version lives in a new folder under a new name (vLLM's prefix cache keys on both);
  the newest ``keep_adapter_versions`` stay loaded and answer to their exact name;
- the prefix cache is reset after a full reload (it does not key on weights);
- a full update that fails after it started writing weights marks the server failed: not ready,
  ``/health`` 503, so the orchestrator replaces it instead of serving mixed weights.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from services.inference import metrics
from services.inference.validation import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    UpdateRefused,
    require_folder,
    validate_adapter,
    validate_checkpoint,
)
from services.protocol.inference import (
    PolicyErrorCode,
    PolicyStatus,
    PolicyUpdateResult,
    UpdateKind,
)

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the manager needs from vLLM. Methods raise ``EngineRefused`` when vLLM says no."""

    async def load_adapter(self, name: str, path: str) -> None: ...
    async def unload_adapter(self, name: str) -> None: ...
    async def pause(self, mode: Literal["wait", "abort"]) -> None: ...
    async def resume(self) -> None: ...
    async def reload_weights(self, path: str) -> None: ...
    async def reset_prefix_cache(self) -> None: ...
    # vLLM's native weight transfer (NCCL); only with weight_transfer_backend set.
    async def transfer_init(self, init_info: dict) -> None: ...
    async def transfer_start(self) -> None: ...
    async def transfer_update(self, update_info: dict | list) -> None: ...
    async def transfer_finish(self, version: str) -> None: ...
    async def transfer_shutdown(self) -> None: ...


class EngineRefused(Exception):
    """vLLM rejected an operation (its message is passed on to the caller)."""


class GenerationGate:
    """Readers = running generations, writer = a full weight swap. Writers get priority."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._running = 0
        self._swapping = False

    @asynccontextmanager
    async def generation(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._swapping)
            self._running += 1
        try:
            yield
        finally:
            async with self._changed:
                self._running -= 1
                self._changed.notify_all()

    async def close(self) -> None:
        """Stop admitting generations (new ones wait until ``open``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._swapping)
            self._swapping = True

    async def drained(self) -> None:
        """Wait until no admitted generation is running any more."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._running == 0)

    async def open(self) -> None:
        async with self._changed:
            self._swapping = False
            self._changed.notify_all()


@dataclass
class ServedVersion:
    version: int
    kind: UpdateKind | None
    adapter: str | None
    path: str


class PolicyManager:
    def __init__(
        self,
        engine: Engine,
        *,
        base_model: str,
        served_name: str,
        update_dir: Path,
        lora_enabled: bool,
        max_lora_rank: int,
        keep_adapter_versions: int,
        pause_mode: Literal["wait", "abort"],
        base_shapes: dict[str, tuple[int, ...]],
        transfer_timeout_s: float = 600.0,
    ) -> None:
        self.engine = engine
        self._base_model = base_model
        self._served_name = served_name
        self._adapters_dir = update_dir / "adapters"
        self._lora_enabled = lora_enabled
        self._max_lora_rank = max_lora_rank
        self._keep = keep_adapter_versions
        self._pause_mode = pause_mode
        self._base_shapes = base_shapes
        self._update_lock = asyncio.Lock()
        self._transfer_version: int | None = None
        self._transfer_started = 0.0
        self._transfer_chunks = 0
        self._transfer_timeout_s = transfer_timeout_s
        self._transfer_watchdog: asyncio.TimerHandle | None = None
        self.gate = GenerationGate()
        self.served = ServedVersion(0, None, None, base_model)
        self.failed: str | None = None
        self._swapping = False
        self._adapter_versions: dict[str, int] = {}
        self._restarts = 0  # trainer restarts seen: names stay unique when versions repeat
        metrics.POLICY_VERSION.set(0)
        metrics.READY.set(1)

    # ---- what clients see -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.failed is None and not self._swapping

    def status(self) -> PolicyStatus:
        return PolicyStatus(
            version=self.served.version,
            model=self._served_name,
            kind=self.served.kind,
            adapter=self.served.adapter,
            ready=self.ready,
            updating=self._update_lock.locked(),
            failed=self.failed,
            base_model=self._base_model,
            lora_enabled=self._lora_enabled,
        )

    def route(self, requested_model: str | None) -> tuple[str | None, int | None]:
        """For a generation asking for ``requested_model``: (model name to run, its version).

        The served name means "the newest version"; an adapter name means exactly that version.
        Anything else is left to vLLM (which answers 404 for unknown names); version None.
        """
        if requested_model in (None, self._served_name):
            return self.served.adapter or requested_model, self.served.version
        if requested_model in self._adapter_versions:
            return requested_model, self._adapter_versions[requested_model]
        return requested_model, None

    # ---- updates ------------------------------------------------------------------------------
    def _check_version(self, version: int, restart: bool = False) -> None:
        """Versions only grow, so a late or repeated push can never roll the policy back; a
        restarted trainer says ``restart`` to re-establish the version it resumed from."""
        if self.failed is not None:
            raise UpdateRefused(PolicyErrorCode.FAILED, f"server failed earlier: {self.failed}")
        if version <= self.served.version and not restart:
            raise UpdateRefused(
                PolicyErrorCode.STALE_VERSION,
                f"version {version} is not newer than the served version {self.served.version}",
            )
        if restart:
            log.info("trainer restart: version %d replaces %d", version, self.served.version)

    @asynccontextmanager
    async def _recorded(self, kind: UpdateKind) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            yield
        except UpdateRefused:
            metrics.WEIGHT_UPDATES.labels(kind.value, "rejected").inc()
            raise
        except Exception:
            metrics.WEIGHT_UPDATES.labels(kind.value, "error").inc()
            raise
        metrics.WEIGHT_UPDATES.labels(kind.value, "ok").inc()
        metrics.WEIGHT_UPDATE_SECONDS.labels(kind.value).observe(time.perf_counter() - started)

    async def update_adapter(
        self, version: int, files: dict[str, bytes] | Path, *, restart: bool = False
    ) -> PolicyUpdateResult:
        """Store, validate and load an adapter, then make it the served version.

        ``files`` is either the uploaded files (name -> content) or a folder to copy from.
        Running generations keep their adapter; new ones get this one. No pause needed.
        """
        started = time.perf_counter()
        async with self._update_lock, self._recorded(UpdateKind.ADAPTER):
            if not self._lora_enabled:
                raise UpdateRefused(
                    PolicyErrorCode.UNSUPPORTED, "LoRA is disabled on this server (enable_lora)"
                )
            self._check_version(version, restart)
            self._restarts += restart
            name = self._adapter_name(version)
            folder = self._adapters_dir / f"{name}-{uuid.uuid4().hex[:8]}"
            try:
                await asyncio.to_thread(self._store_adapter, folder, files)
                await asyncio.to_thread(
                    validate_adapter, folder, self._base_shapes, self._max_lora_rank
                )
                await self.engine.load_adapter(name, str(folder))
            except EngineRefused as error:
                shutil.rmtree(folder, ignore_errors=True)
                raise UpdateRefused(
                    PolicyErrorCode.ENGINE_ERROR, f"vLLM refused the adapter: {error}"
                ) from error
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self.served = ServedVersion(version, UpdateKind.ADAPTER, name, str(folder))
            self._adapter_versions[name] = version
            metrics.POLICY_VERSION.set(version)
            await self._retire_adapters()
            log.info("serving adapter %s from %s", name, folder)
            return PolicyUpdateResult(
                version=version,
                kind=UpdateKind.ADAPTER,
                seconds=time.perf_counter() - started,
                path=str(folder),
                model=name,
            )

    def _adapter_name(self, version: int) -> str:
        """A name never used before for other weights (vLLM's prefix cache keys on it): after a
        trainer restart, versions repeat, so the restart count is part of the name."""
        name = f"{self._served_name}-v{version}"
        return f"{name}-r{self._restarts}" if self._restarts else name

    @staticmethod
    def _store_adapter(folder: Path, files: dict[str, bytes] | Path) -> None:
        folder.mkdir(parents=True)
        if isinstance(files, Path):
            source = require_folder(str(files))
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                if (source / name).is_file():
                    shutil.copyfile(source / name, folder / name)
            return
        for name, content in files.items():
            if name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                raise UpdateRefused(
                    PolicyErrorCode.INVALID_UPDATE,
                    f"unexpected adapter file {name!r}: "
                    f"send {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}",
                )
            (folder / name).write_bytes(content)

    async def _retire_adapters(self) -> None:
        """Unload the names and delete the folders beyond the newest ``keep`` versions. The
        ones kept still answer to their exact name: a trainer running rollouts ahead of its
        update pins an episode to the version it started on."""
        names = list(self._adapter_versions)  # in load order
        for name in names[: -self._keep]:
            try:
                await self.engine.unload_adapter(name)
            except EngineRefused as error:
                log.warning("could not unload adapter %s: %s", name, error)
            del self._adapter_versions[name]
        folders = sorted(
            (p for p in self._adapters_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
        )
        for stale in folders[: -self._keep]:
            shutil.rmtree(stale, ignore_errors=True)

    async def update_full(
        self, version: int, path: str, *, restart: bool = False
    ) -> PolicyUpdateResult:
        """Reload every base weight from a checkpoint folder, with generations held."""
        started = time.perf_counter()
        async with self._update_lock, self._recorded(UpdateKind.FULL):
            self._check_version(version, restart)
            folder = require_folder(path)
            await asyncio.to_thread(validate_checkpoint, folder, self._base_shapes)
            async with self._weights_swap():
                try:
                    await self.engine.reload_weights(str(folder))
                except Exception as error:
                    self._mark_failed(f"full reload of version {version} failed: {error}")
                    raise
                await self.engine.reset_prefix_cache()
                self._install_full(version, str(folder))
            return PolicyUpdateResult(
                version=version,
                kind=UpdateKind.FULL,
                seconds=time.perf_counter() - started,
                path=str(folder),
                model=self._served_name,
            )

    def _install_full(self, version: int, path: str) -> None:
        # A full update replaces the base; adapters trained on the old base no longer apply.
        self.served = ServedVersion(version, UpdateKind.FULL, None, path)
        self._adapter_versions.clear()
        metrics.POLICY_VERSION.set(version)

    @asynccontextmanager
    async def _weights_swap(self) -> AsyncIterator[None]:
        """Not ready, no generation running or starting, engine paused; undone on exit."""
        await self._hold_generations()
        try:
            yield
        finally:
            await self._release_generations()

    async def _hold_generations(self) -> None:
        self._swapping = True
        metrics.READY.set(0)
        await self.gate.close()
        try:
            # abort: running generations end now (finish_reason "abort"); wait: they finish.
            await self.engine.pause(self._pause_mode)
            await self.gate.drained()
        except BaseException:
            await self._release_generations()
            raise

    async def _release_generations(self) -> None:
        try:
            if self.failed is None:
                await self.engine.resume()
        finally:
            self._swapping = False
            metrics.READY.set(1 if self.failed is None else 0)
            await self.gate.open()

    def _mark_failed(self, reason: str) -> None:
        log.error("server marked failed: %s", reason)
        self.failed = reason
        metrics.READY.set(0)

    # ---- native weight transfer (NCCL): bracketed by two calls from the trainer ----------------
    async def begin_transfer(self, version: int, *, restart: bool = False) -> None:
        """Hold generations so vLLM's /update_weights can write into the live weights."""
        await self._update_lock.acquire()
        try:
            self._check_version(version, restart)
            await self._hold_generations()
        except BaseException:
            self._update_lock.release()
            raise
        try:
            await self.engine.transfer_start()
        except Exception as error:
            self._mark_failed(f"native weight transfer of version {version} did not start: {error}")
            await self._release_generations()
            self._update_lock.release()
            raise
        self._transfer_version = version
        self._transfer_started = time.perf_counter()
        self._transfer_chunks = 0
        self._arm_watchdog(version)

    def _arm_watchdog(self, version: int) -> None:
        """A trainer that dies between begin and commit must not leave generation held forever:
        ``transfer_timeout_s`` after the last call of the transfer, it is abandoned."""
        if self._transfer_watchdog is not None:
            self._transfer_watchdog.cancel()
        loop = asyncio.get_running_loop()
        self._transfer_watchdog = loop.call_later(
            self._transfer_timeout_s, lambda: loop.create_task(self._abandon(version))
        )

    async def _abandon(self, version: int) -> None:
        """End a transfer its trainer left: untouched weights serve again (the version stays);
        partly written ones are mixed, so the server is marked failed and gets replaced."""
        if self._transfer_version != version:
            return
        self._transfer_version = None
        self._transfer_watchdog = None
        if self._transfer_chunks:
            self._mark_failed(
                f"native weight transfer of version {version} abandoned after "
                f"{self._transfer_chunks} chunk(s): no call for {self._transfer_timeout_s:.0f} s"
            )
            metrics.WEIGHT_UPDATES.labels(UpdateKind.FULL.value, "error").inc()
        else:
            log.warning(
                "native weight transfer of version %d abandoned before any weight was written "
                "(no call for %.0f s): serving version %d again",
                version, self._transfer_timeout_s, self.served.version,
            )  # fmt: skip
        try:
            await self._release_generations()
        finally:
            self._update_lock.release()

    async def transfer_update(self, update_info: dict | list) -> None:
        """One chunk of a native transfer; a failure leaves mixed weights, so it is fatal."""
        if self._transfer_version is None:
            raise UpdateRefused(
                PolicyErrorCode.INVALID_UPDATE, "no weight transfer in progress: call begin first"
            )
        self._transfer_chunks += 1
        self._arm_watchdog(self._transfer_version)
        try:
            await self.engine.transfer_update(update_info)
        except Exception as error:
            self._mark_failed(
                f"native weight transfer of version {self._transfer_version}: {error}"
            )
            raise

    async def commit_transfer(self, version: int, succeeded: bool) -> PolicyUpdateResult:
        if self._transfer_version != version:
            raise UpdateRefused(
                PolicyErrorCode.INVALID_UPDATE,
                f"no transfer of version {version} is in progress "
                f"(in progress: {self._transfer_version})",
            )
        kind = UpdateKind.FULL
        try:
            if not succeeded:
                metrics.WEIGHT_UPDATES.labels(kind.value, "error").inc()
                self._mark_failed(f"native weight transfer of version {version} failed")
                raise UpdateRefused(PolicyErrorCode.FAILED, self.failed or "")
            try:
                await self.engine.transfer_finish(str(version))
                await self.engine.reset_prefix_cache()
            except Exception as error:
                self._mark_failed(f"finishing the transfer of version {version} failed: {error}")
                raise
            self._install_full(version, "nccl")
            seconds = time.perf_counter() - self._transfer_started
            metrics.WEIGHT_UPDATES.labels(kind.value, "ok").inc()
            metrics.WEIGHT_UPDATE_SECONDS.labels(kind.value).observe(seconds)
            return PolicyUpdateResult(
                version=version, kind=kind, seconds=seconds, path="nccl", model=self._served_name
            )
        finally:
            self._transfer_version = None
            if self._transfer_watchdog is not None:
                self._transfer_watchdog.cancel()
                self._transfer_watchdog = None
            try:
                await self._release_generations()
            finally:
                self._update_lock.release()
